"""The documentation a new user reads: docstrings with examples, the doctests in them, the CLI's help, the docs."""
import doctest
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import kfacemtl
from kfacemtl.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name.removeprefix("kfacemtl.") for m in pkgutil.walk_packages(kfacemtl.__path__, "kfacemtl.")
                 if m.name != "kfacemtl.__main__")


def public_objects(module):
    """The classes and functions a module defines whose names do not start with an underscore."""
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) == module.__name__:
            yield name, obj


@pytest.mark.parametrize("name", MODULES)
def test_every_public_function_and_class_has_a_docstring_with_an_example(name):
    module = importlib.import_module(f"kfacemtl.{name}")
    assert "Example" in (module.__doc__ or ""), f"kfacemtl.{name}: the module docstring has no example"
    lacking = [n for n, obj in public_objects(module)
               if not re.search(r"^\s*Examples?:", inspect.getdoc(obj) or "", re.MULTILINE)]
    assert not lacking, f"kfacemtl.{name}: no 'Example:' section in the docstrings of {lacking}"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(f"kfacemtl.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"kfacemtl.{name}: {result.failed} of {result.attempted} doctest examples failed"


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return parser, action.choices, {a.dest: a.help for a in action._choices_actions}


def test_main_help_lists_every_subcommand_with_a_summary():
    parser, commands, summaries = subcommands()
    text = parser.format_help()
    for name in commands:
        assert summaries.get(name), f"subcommand {name} has no summary"
        assert name in text and summaries[name][:30] in text
    assert "kfacemtl demo" in text  # the examples in the epilog


@pytest.mark.parametrize("command", sorted(subcommands()[1]))
def test_each_subcommand_help_is_complete(command):
    sub = subcommands()[1][command]
    assert sub.description, f"kfacemtl {command}: no description"
    assert f"kfacemtl {command}" in (sub.epilog or ""), f"kfacemtl {command}: no example in the epilog"
    undocumented = [a.option_strings or [a.dest] for a in sub._actions if a.dest != "help" and not a.help]
    assert not undocumented, f"kfacemtl {command}: arguments without help: {undocumented}"
    assert sub.format_help().count("\n") > 8


def test_readme_covers_what_a_new_user_needs():
    readme = (ROOT / "README.md").read_text()
    for heading in ("make demo", "make test", "Configs", "Real faces", "Export and serving", "Distributed training",
                    "Saliency", "Limits"):
        assert heading in readme, heading
    for link in re.findall(r"\]\((?!http)([^)#]+)", readme):  # relative links point at files that exist
        assert (ROOT / link).exists(), f"README links to a missing file: {link}"
    # links within the README lead to a heading (GitHub's anchors: lower case, punctuation dropped, spaces -> '-')
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", readme, re.MULTILINE)}
    broken = [a for a in re.findall(r"\]\(#([^)]+)\)", readme) if a not in anchors]
    assert not broken, f"README links to headings that do not exist: {broken}"


def test_architecture_names_only_what_exists():
    from kfacemtl.training.config import DEFAULTS
    from kfacemtl.models import MultiTaskModel
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    # longest module names first, so that "training.config.resolve_config" is read as module training.config
    pattern = r"(?<![\w.])(" + "|".join(re.escape(m) for m in sorted(MODULES, key=len, reverse=True)) + r")\.([A-Za-z_]\w*)"
    found = re.findall(pattern, text)
    assert len(found) > 30
    missing = [f"{module}.{name}" for module, name in found
               if name not in DEFAULTS.get(module, {})  # config keys such as training.cache
               and name not in ("py", "keras", "yaml", "json", "png", "npz")  # file names such as cli.py
               and not (module == "model" and hasattr(MultiTaskModel, name))  # a model object: model.fit
               and not hasattr(importlib.import_module(f"kfacemtl.{module}"), name)
               and f"{module}.{name}" not in MODULES]  # a submodule
    assert not missing, f"docs/ARCHITECTURE.md names what kfacemtl does not have: {missing}"
