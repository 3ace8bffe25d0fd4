import os
from pathlib import Path

import numpy as np
import pytest

from helpers import write_png
from kfacemtl.errors import ConfigError, LabelError, SourceError
from kfacemtl.data import CsvSource, FolderSource, celeba_attribute_task, make_source, parse_spec, split_rows
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
    (tmp_path / "empty.csv").write_text("path,age\n")  # an empty source
    with pytest.raises(SourceError, match="empty.csv' has no rows"):
        CsvSource(tmp_path / "empty.csv")


def test_manifest_paths_stay_in_their_data_root_and_repeated_files_are_named(tmp_path):
    data = tmp_path / "data"
    _manifest(data, ["img/0.png,23,1,", "img/1.png,30,0,"])
    write_png(tmp_path / "secret.png", np.zeros((4, 4, 3), "uint8"))
    (data / "out.csv").write_text("path,age\nimg/0.png,3\n../secret.png,4\n")
    with pytest.raises(SourceError, match=r"row 3: image file '../secret.png' is outside the data root"):
        CsvSource(data / "out.csv")
    (data / "abs.csv").write_text(f"path,age\nimg/0.png,3\n{tmp_path / 'secret.png'},4\n")
    with pytest.raises(SourceError, match="row 3: image file .*secret.png' is outside the data root"):
        CsvSource(data / "abs.csv")
    os.symlink(tmp_path / "secret.png", data / "img" / "link.png")
    (data / "link.csv").write_text("path,age\nimg/link.png,3\n")
    with pytest.raises(SourceError, match="is outside the data root"):
        CsvSource(data / "link.csv")
    (data / "dup.csv").write_text("path,age\nimg/0.png,3\nimg/1.png,5\n./img/0.png,4\nimg/1.png,6\n")
    with pytest.raises(SourceError, match=r"2 image file\(s\) appear on several rows: rows 2, 4 .*0.png'\); "
                                          r"rows 3, 5 .*duplicates=first"):
        CsvSource(data / "dup.csv")
    kept = make_source({"spec": f"csv:{data / 'dup.csv'}", "duplicates": "first"})
    assert len(kept) == 2 and kept.labels(resolve_tasks(["age"]))[0]["age"][:, 0].tolist() == [3, 5]
    assert kept.describe()["dropped_duplicates"] == 2


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


def test_any_source_samples_a_seeded_subset_of_its_rows(tmp_path):
    rows = [(f"f{i}.png", i % 2) for i in range(12)]
    for name, _ in rows:
        write_png(tmp_path / name, np.zeros((4, 4, 3)))
    (tmp_path / "m.csv").write_text("path,gender\n" + "".join(f"{p},{g}\n" for p, g in rows))
    full = make_source(f"csv:{tmp_path}/m.csv")
    a, b = make_source(f"csv:{tmp_path}/m.csv?sample=5"), make_source(f"csv:{tmp_path}/m.csv", sample=5)
    assert len(a) == 5 and list(a.paths()) == list(b.paths())  # the same rows every time
    picked = [list(full.paths()).index(p) for p in a.paths()]
    assert picked == sorted(picked) and picked != list(range(5))  # drawn across the file, kept in order
    labels = a.labels(resolve_tasks(["gender"]))[0]["gender"]
    assert list(labels) == [rows[i][1] for i in picked]  # each row keeps its own label
    assert len(make_source(f"csv:{tmp_path}/m.csv?sample=50")) == 12  # more than there are: all of them
    for bad in ("0", "-3", "many"):
        with pytest.raises(ConfigError, match=r"sources\.sample"):
            make_source(f"csv:{tmp_path}/m.csv?sample={bad}")


def test_any_source_holds_out_a_validation_set_by_person(tmp_path):
    from kfacemtl.data import make_source as make
    fit = make("synthetic:lab?n=40&val_fraction=0.25")
    val = make("synthetic:lab?n=40&val_fraction=0.25&part=val")
    assert (len(fit), len(val), fit.name, val.name) == (30, 10, "lab-train", "lab-train-val")
    assert not set(fit.rows) & set(val.rows)
    assert list(make("synthetic:lab?n=40&val_fraction=0.25&part=val").rows) == list(val.rows)  # the same each time
    images = make("synthetic:lab?n=40").images()
    assert (val.images() == images[val.rows]).all()
    root = _ckplus_au_fixture(tmp_path / "ck", rows=[(f"S{k:03d}", k % 7, {"AU12"}) for k in range(10)])
    people = make(f"ckplus:{root}?val_fraction=0.3&part=val")
    rest = make(f"ckplus:{root}?val_fraction=0.3")
    assert len(people) == 6 and len(set(people.subjects)) == 3  # both frames of each held-out person
    assert not set(people.subjects) & set(rest.subjects)
    assert len(make(f"ckplus:{root}?val_fraction=0.3&part=val&sample=2")) == 2  # then sampled
    for query, key in (("part=val", "part"), ("val_fraction=0.2&part=test", "part"), ("val_fraction=1", "val_fraction"),
                       ("val_fraction=few", "val_fraction")):
        with pytest.raises(ConfigError, match=rf"'sources\.{key}'"):
            make(f"synthetic:lab?n=40&{query}")


# --- real dataset formats: fixtures written in each format by the test, then the real folders when present ---

from helpers import REAL_DATA


def _utkface_fixture(folder):
    names = ["25_0_0_20170116000000001.jpg.chip.jpg", "31_1_1_20170116000000002.jpg.chip.jpg",
             "8_1_2_20170116000000003.jpg", "70_0_3_20170116000000004.jpg.chip.jpg",
             "44_1_4_20170116000000005.jpg.chip.jpg", "19_0_0_20170116000000006.jpg.chip.jpg",
             "39_1_20170116174525125.jpg.chip.jpg",  # race missing: malformed, as in the real UTKFace
             "61_3_0_20170116000000007.jpg.chip.jpg"]  # gender 3: out of range
    for i, n in enumerate(names):
        write_png(folder / n, np.full((64, 64, 3), 20 * i, "uint8"))
    return folder


def test_utkface_names_splits_and_malformed_files(tmp_path):
    folder = _utkface_fixture(tmp_path / "UTKFace")
    with pytest.warns(UserWarning, match=r"2 file name\(s\) .* do not follow .*39_1_20170116174525125"):
        src = make_source(f"utkface:{folder}")
    assert len(src) == 6 and src.tasks == ("age", "gender", "race")
    labels, weights = src.labels(resolve_tasks(["age", "gender", "race", "expression"]))
    i = [Path(p).name for p in src.paths()].index("8_1_2_20170116000000003.jpg")
    assert labels["age"][i, 0] == 8 and labels["gender"][i] == 1 and labels["race"][i] == 2
    assert weights["expression"].sum() == 0
    with pytest.raises(SourceError, match="2 file name"):
        make_source(f"utkface:{folder}?strict=true")
    with pytest.warns(UserWarning):
        train = make_source(f"utkface:{folder}?split=train&test_fraction=0.5")
    with pytest.warns(UserWarning):
        test = make_source(f"utkface:{folder}?split=test&test_fraction=0.5")
    assert len(train) + len(test) == 6 and not set(train.paths()) & set(test.paths())
    with pytest.warns(UserWarning):
        again = make_source(f"utkface:{folder}?split=test&test_fraction=0.5")
    assert list(again.paths()) == list(test.paths())  # deterministic


def test_split_rows_is_stratified_and_keeps_groups_together():
    groups = [f"p{i // 2}" for i in range(400)]  # 200 people, two images each
    strata = [i // 2 % 4 for i in range(400)]
    test = split_rows(groups, strata, "test", 0.2, seed=3)
    train = split_rows(groups, strata, "train", 0.2, seed=3)
    assert len(test) + len(train) == 400
    assert not {groups[i] for i in test} & {groups[i] for i in train}
    per_stratum = np.bincount([strata[i] for i in test], minlength=4)
    assert per_stratum.tolist() == [20, 20, 20, 20]  # a fifth of each stratum's 50 people, 2 images each
    with pytest.raises(ValueError, match="^split: expected train, test or all, got 'val'"):
        split_rows(groups, strata, "val")


def test_fer2013_csv_and_folder_layouts(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["emotion,pixels,Usage"]
    for emotion, usage in ((3, "Training"), (0, "Training"), (6, "PublicTest")):
        rows.append(f"{emotion},{' '.join(map(str, rng.integers(0, 256, 2304)))},{usage}")
    (tmp_path / "fer2013.csv").write_text("\n".join(rows) + "\n")
    src = make_source(f"fer2013:{tmp_path / 'fer2013.csv'}?usage=Training")
    assert len(src) == 2 and src.images().shape == (2, 48, 48, 1)
    assert src.labels(resolve_tasks(["expression"]))[0]["expression"].tolist() == [3, 0]
    assert len(make_source(f"fer2013:{tmp_path / 'fer2013.csv'}?usage=all")) == 3
    (tmp_path / "bad.csv").write_text("emotion,pixels,Usage\n9," + " ".join(["1"] * 2304) + ",Training\n")
    with pytest.raises(LabelError, match=r"row 2 of .*bad.csv.*label 9.0 is not a class id in \[0, 6\]"):
        make_source(f"fer2013:{tmp_path / 'bad.csv'}").labels(resolve_tasks(["expression"]))
    (tmp_path / "short.csv").write_text("emotion,pixels,Usage\n1,1 2 3,Training\n")
    with pytest.raises(SourceError, match="row 2: expected 2304 values"):
        make_source(f"fer2013:{tmp_path / 'short.csv'}")
    for split, cls in (("train", "happy"), ("train", "sad"), ("test", "neutral")):
        write_png(tmp_path / "kaggle" / split / cls / f"{split}_{cls}.jpg", np.zeros((48, 48, 1), "uint8"))
    train = make_source(f"fer2013:{tmp_path / 'kaggle'}?usage=Training")
    assert sorted(train.labels(resolve_tasks(["expression"]))[0]["expression"].tolist()) == [3, 4]
    assert len(make_source(f"fer2013:{tmp_path / 'kaggle'}?usage=PublicTest")) == 1
    with pytest.raises(ConfigError, match="no PrivateTest split"):
        make_source(f"fer2013:{tmp_path / 'kaggle'}?usage=PrivateTest")
    with pytest.raises(ConfigError, match="expected one of"):
        make_source(f"fer2013:{tmp_path / 'kaggle'}?usage=Val")


@pytest.mark.skipif(not (REAL_DATA / "utkface" / "UTKFace").is_dir(), reason=f"no real UTKFace under {REAL_DATA}")
def test_real_utkface_folder():
    with pytest.warns(UserWarning, match="1 file name"):  # the real folder has one malformed name
        test = make_source(f"utkface:{REAL_DATA / 'utkface' / 'UTKFace'}?split=test")
    with pytest.warns(UserWarning):
        train = make_source(f"utkface:{REAL_DATA / 'utkface' / 'UTKFace'}?split=train")
    assert len(train) + len(test) == 18976 and abs(len(test) / 18976 - 0.2) < 0.01
    labels, _ = test.labels(resolve_tasks(["age", "gender", "race"]))
    assert 1 <= labels["age"].min() and labels["age"].max() <= 116 and set(labels["race"].tolist()) == set(range(5))


@pytest.mark.skipif(not (REAL_DATA / "fer2013" / "train").is_dir(), reason=f"no real FER2013 under {REAL_DATA}")
def test_real_fer2013_folders():
    train = make_source(f"fer2013:{REAL_DATA / 'fer2013'}?usage=Training")
    test = make_source(f"fer2013:{REAL_DATA / 'fer2013'}?usage=PublicTest")
    assert (len(train), len(test)) == (28709, 3589)
    counts = np.bincount(test.labels(resolve_tasks(["expression"]))[0]["expression"], minlength=7)
    assert counts.min() > 0 and counts.argmax() == 3  # happy is FER2013's largest class


def _ckplus_fixture(folder):
    for cls, subjects in (("anger", ["S005", "S010"]), ("contempt", ["S005"]), ("happy", ["S010", "S022", "S037"]),
                          ("sadness", ["S022", "S037", "S042"]), ("surprise", ["S042", "S005"])):
        for k, subject in enumerate(subjects):
            write_png(folder / cls / f"{subject}_00{k + 1}_0000001{k}.png", np.full((48, 48, 1), 30 * k, "uint8"))
    return folder


def test_ckplus_folders_subject_wise_splits_and_contempt(tmp_path):
    folder = _ckplus_fixture(tmp_path / "CK+48")
    with_contempt = resolve_tasks({"expression": {"contempt": True}})
    src = make_source(f"ckplus:{folder}")
    assert len(src) == 11 and src.tasks == ("expression",) and sorted(set(src.subjects)) == [
        "S005", "S010", "S022", "S037", "S042"]
    labels = src.labels(with_contempt)[0]["expression"]
    names = [Path(p).parent.name for p in src.paths()]
    expected = {"anger": 0, "contempt": 7, "happy": 3, "sadness": 4, "surprise": 5}
    assert [expected[n] for n in names] == labels.tolist()
    with pytest.raises(LabelError, match="1 image.* labelled contempt.*contempt=drop"):
        src.labels(resolve_tasks(["expression"]))
    dropped = make_source(f"ckplus:{folder}?contempt=drop")
    assert len(dropped) == 10 and 7 not in dropped.labels(resolve_tasks(["expression"]))[0]["expression"]
    train = make_source(f"ckplus:{folder}?split=train&test_fraction=0.4")
    test = make_source(f"ckplus:{folder}?split=test&test_fraction=0.4")
    assert len(train) + len(test) == 11 and len(test) > 0 and len(train) > 0
    assert not set(train.subjects) & set(test.subjects)  # one person never on both sides
    write_png(folder / "happy" / "IMG_0001.png", np.zeros((8, 8, 1), "uint8"))
    with pytest.warns(UserWarning, match=r"1 file\(s\) .* have no subject id"):
        assert len(make_source(f"ckplus:{folder}")) == 12
    write_png(folder / "bored" / "S001_001_00000001.png", np.zeros((8, 8, 1), "uint8"))
    with pytest.raises(LabelError, match="bored.* is not an expression folder"):
        make_source(f"ckplus:{folder}")
    with pytest.raises(ConfigError, match=r"'sources\.contempt': expected keep .* or drop, got 'maybe'"):
        make_source(f"ckplus:{folder}?contempt=maybe")


def _ckplus_au_fixture(root, rows=None):
    """labels.csv in the CK+ action-unit layout: per subject a neutral first frame and a peak frame."""
    from kfacemtl.tasks import ACTION_UNITS
    columns = [*ACTION_UNITS[:5], "AU10", *ACTION_UNITS[5:]]  # an AU the project does not model is ignored
    lines = ["path,subject,sequence,frame,expression,expression_name," + ",".join(columns)]
    for k, (subject, expression, aus) in enumerate(rows or [("S005", 5, {"AU1", "AU2", "AU26"}),
                                                             ("S010", 3, {"AU6", "AU12"}), ("S022", 7, {"AU12"}),
                                                             ("S037", 0, {"AU4", "AU10"}), ("S042", 4, {"AU15"})]):
        for frame, expr, coded in (("first", 6, set()), ("peak", expression, aus)):
            name = f"images/{subject}_001_0000000{1 if frame == 'first' else 9}.png"
            write_png(root / name, np.full((16, 16, 1), 20 * k, "uint8"))
            lines.append(f"{name},{subject},{subject}_001,{frame},{expr},x," + ",".join(
                "1" if au in coded else "0" for au in columns))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def test_ckplus_with_action_units_reads_the_manifest_by_frame_and_subject(tmp_path):
    from kfacemtl.tasks import ACTION_UNITS
    root = _ckplus_au_fixture(tmp_path / "ckplus_au")
    tasks = resolve_tasks({"expression": {"contempt": True}, "action_units": {}})
    src = make_source(f"ckplus:{root}")
    assert len(src) == 10 and src.tasks == ("expression", "action_units")
    labels = src.labels(tasks)[0]
    assert labels["expression"].tolist() == [6, 5, 6, 3, 6, 7, 6, 0, 6, 4]  # first (neutral) then peak
    aus = labels["action_units"]
    assert aus.shape == (10, 14) and aus[0::2].sum() == 0  # neutral frames: every AU absent
    on = lambda row: [ACTION_UNITS[i] for i in np.flatnonzero(aus[row])]
    assert on(1) == ["AU1", "AU2", "AU26"] and on(7) == ["AU4"]  # AU10 is not one of the 14
    peak = make_source(f"ckplus:{root / 'labels.csv'}?frames=peak&contempt=drop")
    assert len(peak) == 4 and 7 not in peak.labels(tasks)[0]["expression"]
    assert len(make_source(f"ckplus:{root}?frames=first")) == 5
    train = make_source(f"ckplus:{root}?split=train&test_fraction=0.4")
    test = make_source(f"ckplus:{root}?split=test&test_fraction=0.4")
    assert (len(train), len(test)) == (6, 4) and not set(train.subjects) & set(test.subjects)
    with pytest.raises(ConfigError, match=r"'sources\.frames': expected one of"):
        make_source(f"ckplus:{root}?frames=onset")
    text = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join(text[:4] + [text[4].replace(",1,", ",2,", 1)] + text[5:]))
    with pytest.raises(LabelError, match=r"labels.csv' row 5: AU\d+ is '2', expected 0 or 1"):
        make_source(f"ckplus:{root}")
    (root / "labels.csv").write_text("path,subject,frame,expression\n")
    with pytest.raises(SourceError, match=r"lacks column\(s\) \['AU1'"):
        make_source(f"ckplus:{root}")


@pytest.mark.skipif(not (REAL_DATA / "ckplus_au" / "labels.csv").is_file(), reason=f"no CK+ AUs under {REAL_DATA}")
def test_real_ckplus_action_units_split_by_subject():
    train = make_source(f"ckplus:{REAL_DATA / 'ckplus_au'}?split=train")
    test = make_source(f"ckplus:{REAL_DATA / 'ckplus_au'}?split=test")
    assert len(train) + len(test) == 514 and len(set(train.subjects)) + len(set(test.subjects)) == 70
    assert not set(train.subjects) & set(test.subjects)
    aus = train.labels(resolve_tasks({"expression": {"contempt": True}, "action_units": {}}))[0]["action_units"]
    assert (aus.sum(axis=0) > 0).all()  # every modelled AU occurs among the training subjects


def _rafdb_fixture(root):
    lines = ["train_00001.jpg 4", "train_00002.jpg 1", "train_00003.jpg 6", "test_0001.jpg 7", "test_0002.jpg 5"]
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        stem = line.split(".")[0]
        write_png(root / "Image" / "aligned" / f"{stem}_aligned.jpg", np.full((100, 100, 3), 90, "uint8"))
    return root


def test_rafdb_label_file_splits_and_errors(tmp_path):
    root = _rafdb_fixture(tmp_path / "basic")
    tasks = resolve_tasks(["expression"])
    train = make_source(f"rafdb:{root}?split=train")
    assert len(train) == 3 and train.paths()[0].endswith("Image/aligned/train_00001_aligned.jpg")
    # RAF-DB 4 happiness, 1 surprise, 6 anger -> FER2013 order 3, 5, 0
    assert train.labels(tasks)[0]["expression"].tolist() == [3, 5, 0]
    test = make_source(f"rafdb:{root / 'EmoLabel' / 'list_patition_label.txt'}?split=test")
    assert test.labels(tasks)[0]["expression"].tolist() == [6, 4]  # neutral, sadness
    assert len(make_source(f"rafdb:{root}")) == 5
    with pytest.raises(SourceError, match="no original image folder"):
        make_source(f"rafdb:{root}?images=original")
    (root / "Image" / "aligned" / "test_0002_aligned.jpg").unlink()
    with pytest.raises(SourceError, match=r"1 image file\(s\) listed do not exist.*test_0002_aligned.jpg"):
        make_source(f"rafdb:{root}")
    (root / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 4\ntrain_00002.jpg 9\n")
    with pytest.raises(LabelError, match="line 2: label 9 is not a RAF-DB expression id"):
        make_source(f"rafdb:{root}")


def test_affectnet_csv_masks_missing_labels(tmp_path):
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
    rows = [("1/a.jpg", 1, 0.8, 0.3),    # happy
            ("1/b.jpg", 7, -0.4, 0.1),   # contempt
            ("2/c.jpg", 8, 0.1, -0.2),   # no expression: valence/arousal only
            ("2/d.jpg", 10, -2, -2),     # no face: left out
            ("2/e.jpg", 6, -2, -2)]      # anger, valence/arousal not annotated
    for r in rows:
        write_png(tmp_path / "Manually_Annotated_Images" / r[0], np.full((32, 32, 3), 50, "uint8"))
    csv = tmp_path / "validation.csv"
    csv.write_text(header + "\n" + "\n".join(f"{p},0,0,32,32,,{e},{v},{a}" for p, e, v, a in rows) + "\n")
    tasks = resolve_tasks({"expression": {"contempt": True}, "valence_arousal": None})
    src = make_source(f"affectnet:{csv}")
    assert len(src) == 4 and src.paths()[0].endswith("Manually_Annotated_Images/1/a.jpg")
    labels, weights = src.labels(tasks)
    assert weights["expression"].tolist() == [1, 1, 0, 1] and labels["expression"].tolist() == [3, 7, 0, 0]
    assert weights["valence_arousal"].tolist() == [1, 1, 1, 0]
    np.testing.assert_allclose(labels["valence_arousal"][2], [0.1, -0.2])
    dropped = make_source(f"affectnet:{csv}?contempt=drop")
    assert dropped.labels(resolve_tasks(["expression", "valence_arousal"]))[1]["expression"].tolist() == [1, 0, 0, 1]
    csv.write_text(header + "\n1/a.jpg,0,0,32,32,,happy,0.1,0.1\n")
    with pytest.raises(LabelError, match="row 2: expression 'happy' is not a number"):
        make_source(f"affectnet:{csv}")
    csv.write_text(header + "\n1/a.jpg,0,0,32,32,,1,1.5,0.1\n")
    with pytest.raises(LabelError, match=r"row 2 of .*validation.csv.*valence_arousal.*outside the range"):
        make_source(f"affectnet:{csv}").labels(tasks)
    csv.write_text(header + "\n9/zz.jpg,0,0,32,32,,1,0.5,0.1\n")
    with pytest.raises(SourceError, match="do not exist.*9/zz.jpg"):
        make_source(f"affectnet:{csv}")


def _celeba_fixture(root, partition=True):
    files = [f"{i:06d}.jpg" for i in range(1, 7)]
    male = [1, -1, -1, 1, -1, 1]
    smiling = [1, 1, -1, -1, 1, -1]
    rows = [f"{f} -1 {m:>2} {s:>2}" for f, m, s in zip(files, male, smiling)]
    root.mkdir(parents=True)
    (root / "list_attr_celeba.txt").write_text(f"{len(files)}\n5_o_Clock_Shadow Male Smiling\n" + "\n".join(rows) + "\n")
    if partition:
        (root / "list_eval_partition.txt").write_text("".join(f"{f} {p}\n" for f, p in zip(files, [0, 0, 0, 1, 2, 2])))
    (root / "identity_CelebA.txt").write_text("".join(f"{f} {i // 2}\n" for i, f in enumerate(files)))
    for f in files:
        write_png(root / "img_align_celeba" / f, np.full((218, 178, 3), 120, "uint8"))
    return root


def test_celeba_gender_attributes_and_partitions(tmp_path):
    root = _celeba_fixture(tmp_path / "celeba")
    smiling = celeba_attribute_task("Smiling")
    src = make_source(f"celeba:{root}?attributes=Smiling")
    assert src.tasks == ("gender", "smiling") and len(src) == 6
    labels, _ = src.labels(resolve_tasks(["gender"]) + [smiling])
    assert labels["gender"].tolist() == [0, 1, 1, 0, 1, 0] and labels["smiling"].tolist() == [1, 1, 0, 0, 1, 0]
    assert [len(make_source(f"celeba:{root}?split={s}")) for s in ("train", "valid", "test")] == [3, 1, 2]
    with pytest.raises(ConfigError, match=r"\['Wings'\] not in .*attributes: 5_o_Clock_Shadow, Male, Smiling"):
        make_source(f"celeba:{root}?attributes=Wings")
    # without CelebA's partition file: split by identity (two images per person)
    bare = _celeba_fixture(tmp_path / "bare", partition=False)
    train = make_source(f"celeba:{bare}?split=train&test_fraction=0.5")
    test = make_source(f"celeba:{bare}?split=test&test_fraction=0.5")
    ids = lambda s: {int(Path(p).stem) - 1 >> 1 for p in s.paths()}  # noqa: E731  (identity = index // 2)
    assert len(train) + len(test) == 6 and not ids(train) & ids(test)
    (bare / "list_attr_celeba.txt").write_text("1\nMale Smiling\n000001.jpg 1 0\n")
    with pytest.raises(LabelError, match="line 3: expected a file name and 2 values of 1 or -1"):
        make_source(f"celeba:{bare}")


def test_every_adapter_feeds_the_pipeline(tmp_path):
    from kfacemtl.data import make_dataset
    tasks = resolve_tasks({"gender": None, "expression": {"contempt": True}})
    sources = [make_source(f"ckplus:{_ckplus_fixture(tmp_path / 'ck')}"),
               make_source(f"rafdb:{_rafdb_fixture(tmp_path / 'raf')}"),
               make_source(f"celeba:{_celeba_fixture(tmp_path / 'celeba')}")]
    images, labels, weights = next(iter(make_dataset(sources, tasks, batch_size=64, image_size=(32, 32),
                                                     training=False)))
    assert images.shape == (22, 32, 32, 3) and float(weights["gender"].numpy().sum()) == 6
    assert float(weights["expression"].numpy().sum()) == 16


@pytest.mark.skipif(not (REAL_DATA / "lfw_expressions" / "labels.csv").is_file(),
                    reason=f"no LFW expressions under {REAL_DATA}")
def test_real_lfw_expressions_manifest_needs_contempt():
    src = make_source(f"csv:{REAL_DATA / 'lfw_expressions' / 'labels.csv'}?domain=lfw")
    assert len(src) == 1624 and src.tasks == ("expression",)
    labels, _ = src.labels(resolve_tasks({"expression": {"contempt": True}}))
    assert np.bincount(labels["expression"], minlength=8)[7] == 9
    with pytest.raises(LabelError, match=r"label 7.0 is not a class id in \[0, 6\]"):
        src.labels(resolve_tasks(["expression"]))
