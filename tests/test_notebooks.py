"""The notebooks run top to bottom (with small parameters; ``make test-e2e``) and are stored executed (by
notebooks/execute.py), so a code host shows their tables and plots; ``make test`` checks, without running them, that
every name they take from kfacemtl still exists and their calls of it fit its signature."""

import ast
import doctest
import importlib
import importlib.util
import inspect

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


@pytest.mark.e2e
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


def _kfacemtl_names(tree) -> dict:
    """``{name in the notebook: the kfacemtl object or module it stands for}``, from its imports; a name that is
    missing raises here (ImportError or AttributeError, naming it)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "kfacemtl":  # import kfacemtl.x binds kfacemtl; ... as y binds x
                    module = alias.name if alias.asname else "kfacemtl"
                    names[alias.asname or "kfacemtl"] = importlib.import_module(module)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "kfacemtl":
            module = importlib.import_module(node.module)
            for alias in node.names:
                found = getattr(module, alias.name, None)
                names[alias.asname or alias.name] = (found if found is not None
                                                     else importlib.import_module(f"{node.module}.{alias.name}"))
    return names


def _module_attribute(node, names):
    """``(module, attribute)`` when ``node`` reads an attribute of a kfacemtl module the notebook named
    (``kfacemtl.train_run``, ``synthetic.generate``), else None."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and inspect.ismodule(
            names.get(node.value.id)):
        return names[node.value.id], node.attr
    return None


def _check_kfacemtl_calls(nb, name: str) -> int:
    """Every name ``nb`` takes from kfacemtl exists, and every call of one fits its signature (the number of
    positional arguments, the keywords, the required ones); returns how many calls were checked."""
    trees = {i + 1: ast.parse("\n".join("" if line.lstrip().startswith(("%", "!")) else line  # IPython's magics
                                        for line in c.source.splitlines()), filename=f"{name} cell {i + 1}")
             for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    names = {k: v for tree in trees.values() for k, v in _kfacemtl_names(tree).items()}
    checked = 0
    for cell, tree in trees.items():
        for node in ast.walk(tree):
            read = _module_attribute(node, names)
            if read is not None:
                assert hasattr(*read), f"{name} cell {cell} line {node.lineno}: {ast.unparse(node)} is gone"
            if not isinstance(node, ast.Call):
                continue
            read = _module_attribute(node.func, names)
            target = names.get(node.func.id) if isinstance(node.func, ast.Name) else read and getattr(*read, None)
            if not callable(target):
                continue
            starred = any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords)
            signature = inspect.signature(target)
            try:  # the call's shape (how many positional arguments, which keywords) against the signature
                (signature.bind_partial if starred else signature.bind)(
                    *([] if starred else node.args), **{k.arg: None for k in node.keywords if k.arg is not None})
            except TypeError as e:
                where = f"{name} cell {cell} line {node.lineno}"
                raise AssertionError(f"{where}: {ast.unparse(node.func)}(): {e}") from None
            checked += 1
    return checked


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_name_a_notebook_takes_from_kfacemtl_exists_and_its_calls_fit_its_signature(path):
    # the cheap guard of make test; make test-e2e runs the notebooks themselves
    assert _check_kfacemtl_calls(nbformat.read(path, as_version=4), path.name) >= 3, path.name


def test_the_notebook_check_names_a_missing_name_and_a_call_that_no_longer_fits():
    cell = nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[cell("%matplotlib inline\nimport kfacemtl\nfrom kfacemtl.training import "
                                              "demo_config"), cell("cfg = demo_config(train_faces=10, faces=3)")])
    with pytest.raises(AssertionError, match=r"nb cell 2 line 1: demo_config\(\): .*keyword argument 'faces'"):
        _check_kfacemtl_calls(nb, "nb")
    nb.cells[1] = cell("cfg = demo_config(1, 2, 3, 4, 5, 6)")
    with pytest.raises(AssertionError, match=r"demo_config\(\): too many positional arguments"):
        _check_kfacemtl_calls(nb, "nb")
    nb.cells[1] = cell("from kfacemtl import train_run\ntrain_run({})")  # no out_dir
    with pytest.raises(AssertionError, match=r"cell 2 line 2: train_run\(\): missing a required argument: 'out_dir'"):
        _check_kfacemtl_calls(nb, "nb")
    nb.cells[1] = cell("kfacemtl.train_in_one_line(demo_config())")
    with pytest.raises(AssertionError, match="nb cell 2 line 1: kfacemtl.train_in_one_line is gone"):
        _check_kfacemtl_calls(nb, "nb")
    nb.cells[1] = cell("from kfacemtl.training import train_in_one_line")
    with pytest.raises(ImportError, match="train_in_one_line"):
        _check_kfacemtl_calls(nb, "nb")
    nb.cells[1] = cell("kfacemtl.train_run(demo_config(train_faces=10), 'runs/x')")
    assert _check_kfacemtl_calls(nb, "nb") == 2


def test_every_notebook_is_checked():
    assert sorted(p.name for p in NOTEBOOKS) == sorted(EXPECT)
