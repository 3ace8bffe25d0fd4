"""The notebooks run top to bottom (with small parameters) and are stored without outputs."""
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
SMALL = "TRAIN_FACES = 256\nTEST_FACES = 64\nEPOCHS = 1\nSTEPS_PER_EPOCH = 5\n"
REAL_DATA = Path(os.environ.get("KFACEMTL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
EXTRA = {"02_real_data.ipynb": f"DATA = {str(REAL_DATA)!r}\n", "05_distillation_and_matching.ipynb": "ROUNDS = 1\n"}
# what each notebook's outputs must show
EXPECT = {"01_quickstart.ipynb": ["street-test", "expression acc"],
          "03_export_and_serve.ipynb": ["street-test", "saved_models/faces/1", "DT_STRING",
                                        "['serving_default', 'serving_float']", "same expressions: True",
                                        "InvalidInputError", "notes.png: is not a JPEG or PNG"],
          "04_saliency.ipynb": ["street-test", "head           method", "expression     gradcam++",
                                "age            scorecam"],
          "02_real_data.ipynb": ["utkface-train", "fer2013-Training", "lfw-expressions", "single-task expression",
                                 "delta (MTL better > 0)", "expression  fer2013-PublicTest  accuracy"],
          "05_distillation_and_matching.ipynb": ["street-train", "labels: none", "happy ->",
                                                 "distillation round 1", "match_action_units", "street-test"]}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    if path.name == "02_real_data.ipynb" and not (REAL_DATA / "utkface" / "UTKFace").is_dir():
        pytest.skip(f"the real data is not at {REAL_DATA} (set KFACEMTL_DATA); 02_real_data reads it")
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs must be stripped in git"
    params = next(c for c in nb.cells if c.cell_type == "code" and "Parameters" in c.source)
    params.source = "# Parameters (test)\n" + SMALL + EXTRA.get(path.name, "")
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    for expected in EXPECT[path.name]:
        assert expected in text, expected
    # every figure is shown inline, also after train_run has written its plots (which must not switch the backend)
    for cell in nb.cells:
        if cell.cell_type == "code" and "plt.subplots" in cell.source:
            assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source[:80]


def test_every_notebook_is_checked():
    assert sorted(p.name for p in NOTEBOOKS) == sorted(EXPECT)
