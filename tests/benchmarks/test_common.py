"""The benchmarks are a package: each module imports without path edits, answers --help, and the shared module's
examples run."""
import doctest
import importlib
import pkgutil

import pytest

import benchmarks
import benchmarks.common

MODULES = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name != "common")


def test_the_shared_module_examples_run():
    for module in (benchmarks, benchmarks.common):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__


@pytest.mark.parametrize("name", MODULES)
def test_every_benchmark_answers_help(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0 and "usage" in capsys.readouterr().out


def test_no_benchmark_edits_the_import_path_or_imports_another_benchmark_s_private_helpers():
    for name in MODULES + ["common"]:
        source = importlib.import_module(f"benchmarks.{name}").__file__
        text = open(source).read()
        assert "sys.path" not in text, name
        for other in MODULES:
            assert f"from benchmarks.{other} import _" not in text and f"from {other} import" not in text, name
