"""The notebooks run top to bottom (with small parameters) and are stored executed (by notebooks/execute.py), so a
code host shows their tables and plots."""

import doctest
import importlib.util

import nbformat
import pytest
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.util import run_sync

from helpers import REAL_DATA, ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
_spec = importlib.util.spec_from_file_location("execute", ROOT / "notebooks" / "execute.py")
execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute)
SMALL = "TRAIN_FACES = 256\nTEST_FACES = 64\nEPOCHS = 1\nSTEPS_PER_EPOCH = 5\n"
EXTRA = {"02_real_data.ipynb": f"DATA = {str(REAL_DATA)!r}\n", "04_saliency.ipynb": "FACES_EXPLAINED = 8\n",
         "06_photos.ipynb": f"DATA = {str(REAL_DATA)!r}\nPHOTOS = 2\n",
         "05_distillation_and_matching.ipynb": "ROUNDS = 1\n"}
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
                                                 "distillation round 1", "match_action_units", "street-test"],
          "06_photos.ipynb": ["ece_before", "interval_coverage", "group.png", "unreadable", "results.csv and"]}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_notebook_is_stored_executed(path):
    # so that a code host shows its tables and plots
    outputs = [o for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any(o.get("text") for o in outputs), f"{path.name}: store it executed (its tables)"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name}: store it executed (its plots)"
    # without TensorFlow's machine-dependent C++ log lines (python notebooks/execute.py leaves them out)
    stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    assert stderr == execute.without_tf_log_lines(stderr), f"{path.name}: store it with python notebooks/execute.py"


def test_stored_notebooks_leave_out_only_tensorflows_log_lines():
    text = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            "I0000 00:00:1796433920.535150   15922 port.cc:153] oneDNN custom operations are on.\n"
            "E0000 00:00:1796433923.380764   15922 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n"
            "W0000 00:00:1796434122.971533   16851 local_rendezvous.cc:412] Local rendezvous is aborting\n"
            "\t [[{{function_node __inference_cond_false_41304_63937}}{{node cond/Assert_2/Assert}}]]\n"
            "kfacemtl/data/registry.py:103: UserWarning: utkface: 1 file name(s) do not follow the pattern\n"
            "I0000 is not a log line\n")
    assert doctest.testmod(execute).failed == 0
    assert execute.without_tf_log_lines(text) == (
        "kfacemtl/data/registry.py:103: UserWarning: utkface: 1 file name(s) do not follow the pattern\n"
        "I0000 is not a log line\n")


@pytest.fixture(scope="module")
def kernel():
    """One Python kernel for the notebooks this test process runs: each notebook starts in it from an empty namespace
    (``%reset -f``) in a folder of its own. A new kernel and its TensorFlow import take about 8 s on 2 CPU cores."""
    km = AsyncKernelManager(kernel_name="python3")
    run_sync(km.start_kernel)()
    yield km
    run_sync(km.shutdown_kernel)(now=True)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, kernel):
    if path.name in ("02_real_data.ipynb", "06_photos.ipynb") and not (REAL_DATA / "utkface" / "UTKFace").is_dir():
        pytest.skip(f"the real data is not at {REAL_DATA} (set KFACEMTL_DATA); {path.name} reads it")
    nb = nbformat.read(path, as_version=4)
    params = next(c for c in nb.cells if c.cell_type == "code" and "Parameters" in c.source)
    params.source = (f"%reset -f\nimport os\nos.chdir({str(tmp_path)!r})\n# Parameters (test)\n" + SMALL
                     + EXTRA.get(path.name, ""))
    NotebookClient(nb, km=kernel, timeout=600).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    for expected in EXPECT[path.name]:
        assert expected in text, expected
    # every figure is shown inline, also after train_run has written its plots (which must not switch the backend)
    for cell in nb.cells:
        if cell.cell_type == "code" and "plt.subplots" in cell.source:
            assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source[:80]


def test_every_notebook_is_checked():
    assert sorted(p.name for p in NOTEBOOKS) == sorted(EXPECT)
