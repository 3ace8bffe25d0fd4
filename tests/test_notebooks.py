"""The notebooks run top to bottom (with small parameters) and are stored without outputs."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
SMALL = "TRAIN_FACES = 256\nTEST_FACES = 64\nEPOCHS = 1\nSTEPS_PER_EPOCH = 5\n"
# what each notebook's outputs must show
EXPECT = {"01_quickstart.ipynb": ["street-test", "expression acc"],
          "03_export_and_serve.ipynb": ["street-test", "saved_models/faces/1", "DT_STRING",
                                        "['serving_default', 'serving_float']", "same expressions: True",
                                        "InvalidInputError", "notes.png: is not a JPEG or PNG"],
          "04_saliency.ipynb": ["street-test", "head           method", "expression     gradcam++",
                                "age            scorecam"]}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs must be stripped in git"
    params = next(c for c in nb.cells if c.cell_type == "code" and "Parameters" in c.source)
    params.source = "# Parameters (test)\n" + SMALL
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    for expected in EXPECT[path.name]:
        assert expected in text, expected


def test_every_notebook_is_checked():
    assert sorted(p.name for p in NOTEBOOKS) == sorted(EXPECT)
