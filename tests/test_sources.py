import numpy as np
import pytest

from conftest import write_png
from kfacemtl.errors import ConfigError, LabelError, SourceError
from kfacemtl.sources import CsvSource, FolderSource, make_source, parse_spec
from kfacemtl.tasks import resolve_tasks

TASKS = resolve_tasks(["age", "gender", "expression", "action_units", "valence_arousal"])


def _manifest(tmp_path, rows, header="path,age,gender,action_units"):
    for i in range(len(rows)):
        write_png(tmp_path / "img" / f"{i}.png", np.full((20, 24, 1), 40 * i, "uint8"))
    (tmp_path / "faces.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return tmp_path / "faces.csv"


def test_csv_manifest_reads_labels_and_masks_empty_cells(tmp_path):
    aus = " ".join(["1", "0"] * 7)
    csv = _manifest(tmp_path, [f"img/0.png,23,1,{aus}", "img/1.png,,female,", f"img/2.png,50.5,,{aus}"])
    src = CsvSource(csv, domain="studio")
    assert src.tasks == ("age", "gender", "action_units") and src.domain == "studio" and len(src) == 3
    labels, weights = src.labels(TASKS)
    assert weights["age"].tolist() == [1, 0, 1] and labels["age"][:, 0].tolist() == [23, 60, 50.5]
    assert weights["gender"].tolist() == [1, 1, 0] and labels["gender"].tolist() == [1, 1, 0]
    assert labels["action_units"][0].tolist() == [1, 0] * 7 and weights["action_units"].tolist() == [1, 0, 1]
    assert weights["expression"].tolist() == [0, 0, 0]  # not in the manifest
    assert all(np.all(np.isfinite(v)) for v in labels.values())


@pytest.mark.parametrize("row,match", [
    ("img/0.png,23,2,", r"row 2 \(img/0.png\): task 'gender' label 2.0 is not a class id"),
    ("img/0.png,nan,1,", r"row 2 \(img/0.png\): task 'age' label nan is NaN"),
    ("img/0.png,old,1,", r"row 2 \(img/0.png\): task 'age' cell 'old' is not a number"),
    ("img/0.png,200,1,", r"row 2 \(img/0.png\): task 'age' label 200.0 is outside the range \[0, 120\]"),
    ("img/0.png,20,1,1 0 1", r"task 'action_units' cell '1 0 1' has 3 value\(s\), expected 14"),
])
def test_bad_labels_name_source_row_and_task(tmp_path, row, match):
    src = CsvSource(_manifest(tmp_path, [row]))
    with pytest.raises(LabelError, match=match):
        src.labels(TASKS)


def test_missing_files_and_columns_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="manifest file .*nope.csv.* does not exist"):
        CsvSource(tmp_path / "nope.csv")
    csv = _manifest(tmp_path, ["img/0.png,23,1,"])
    (tmp_path / "bad.csv").write_text("path,age\nimg/0.png,3\nimg/missing.png,4\n")
    with pytest.raises(SourceError, match=r"row 3: image file .*missing.png.* does not exist"):
        CsvSource(tmp_path / "bad.csv")
    (tmp_path / "nopath.csv").write_text("file,age\nimg/0.png,3\n")
    with pytest.raises(SourceError, match="no 'path' column"):
        CsvSource(tmp_path / "nopath.csv")
    with pytest.raises(SourceError, match=r"no column for task\(s\) \['race'\]"):
        CsvSource(csv, tasks=["race"])


def test_class_folders(tmp_path):
    for cls in ("happy", "Sad", "3"):
        write_png(tmp_path / "fer" / cls / "a.png", np.zeros((8, 8, 1), "uint8"))
    src = FolderSource(tmp_path / "fer", task="expression")
    labels, weights = src.labels(TASKS)
    assert sorted(labels["expression"].tolist()) == [3, 3, 4] and weights["expression"].sum() == 3
    write_png(tmp_path / "fer" / "grumpy" / "a.png", np.zeros((8, 8, 1), "uint8"))
    with pytest.raises(LabelError, match="grumpy.* is not a class of task 'expression'"):
        FolderSource(tmp_path / "fer").labels(TASKS)


def test_specs_and_options():
    assert parse_spec("csv:/data/x.csv?domain=lab") == ("csv", "/data/x.csv", {"domain": "lab"})
    src = make_source({"spec": "synthetic:lab", "n": 4, "tasks": ["expression"]})
    assert src.tasks == ("expression",) and len(src) == 4
    assert make_source("synthetic:street?split=test&n=4").tasks[0] == "age"
    with pytest.raises(ConfigError, match=r"'sources\[0\]\.colour': not an option of synthetic sources"):
        make_source("synthetic:lab?colour=1", key_path="sources[0]")
    with pytest.raises(ConfigError, match="unknown source format 'parquet'"):
        make_source("parquet:x")
    with pytest.raises(ConfigError, match="expected FORMAT:PATH"):
        make_source("just-a-path")
    with pytest.raises(SourceError, match="unknown domain 'mars'"):
        make_source("synthetic:mars")
