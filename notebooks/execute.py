"""Execute notebooks top to bottom with their own parameters and store them with their outputs.

Each notebook runs in this folder (so its default data path, ``../../shared/data``, is the checkout's neighbour)
and is written back in place. TensorFlow's C++ log lines ("I0000 00:00:... port.cc:153] oneDNN custom operations
are on", "All log messages before absl::InitializeLog() ..."), which depend on the machine and carry no result,
are left out of the stored standard-error output; everything else the cells printed is kept.

    python notebooks/execute.py                      # every notebook (about 7 minutes on 2 CPU cores)
    python notebooks/execute.py 02_real_data.ipynb   # one
"""

import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
# absl's log line prefix (severity, date or 0000, time, thread, file:line]) and the lines TensorFlow prints with it
TF_LOG_LINE = re.compile(r"^([IWEF]\d{4} [\d:]+\.\d+ +\d+ \S+:\d+\]"
                         r"|WARNING: All log messages before absl::InitializeLog\(\)"
                         r"|To enable the following instructions:"
                         r"|\s+\[\[\{\{(function_)?node )")


def without_tf_log_lines(text: str) -> str:
    """``text`` less TensorFlow's C++ log lines.

    Example:
        >>> without_tf_log_lines("I0000 00:00:1796433920.535150   15922 port.cc:153] oneDNN custom operations\\nok\\n")
        'ok\\n'
    """
    return "".join(line for line in text.splitlines(keepends=True) if not TF_LOG_LINE.match(line))


def execute(path: Path) -> float:
    """Run the notebook at ``path`` in this folder and write it back with its outputs; returns the seconds taken."""
    nb = nbformat.read(path, as_version=4)
    _, nb = nbformat.validator.normalize(nb)
    start = time.time()
    NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        for output in cell.outputs:
            if output.output_type == "stream" and output.name == "stderr":
                output.text = without_tf_log_lines(output.text)
        cell.outputs = [o for o in cell.outputs if o.output_type != "stream" or o.text]
    nbformat.write(nb, path)
    return time.time() - start


def main(argv=None):
    names = sys.argv[1:] if argv is None else argv
    paths = [HERE / n for n in names] if names else sorted(HERE.glob("*.ipynb"))
    for path in paths:
        if not path.is_file():
            raise SystemExit(f"{path}: no such notebook")
        print(f"{path.name}: {execute(path):.0f} s", flush=True)


if __name__ == "__main__":
    main()
