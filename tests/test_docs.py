"""The documentation a new user reads: docstrings with examples, the doctests in them, the CLI's help, the docs."""
import doctest
import importlib
import inspect
import pkgutil
import re

import pytest

import kfacemtl
from kfacemtl.cli import build_parser

from helpers import ROOT
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


@pytest.mark.parametrize("name", MODULES)
def test_every_docstring_example_shows_a_result(name):
    # an example runs and shows what it gives: no comment-only examples, no checks that cannot fail
    module = importlib.import_module(f"kfacemtl.{name}")
    for test in doctest.DocTestFinder(recurse=True).find(module, module.__name__):
        if not test.examples or not test.name.startswith(module.__name__):
            continue
        assert any(ex.want.strip() or ex.exc_msg for ex in test.examples), f"{test.name}: no example shows a result"
        for ex in test.examples:
            assert not ex.source.lstrip().startswith("#"), f"{test.name}: a comment-only example: {ex.source!r}"
            assert "or True" not in ex.source, f"{test.name}: an example that cannot fail: {ex.source!r}"


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


def _anchors(text: str) -> set:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces -> '-'."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_readme_is_short_and_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert readme.count("\n") <= 400
    commands = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    assert commands.splitlines()[0].startswith("make demo") and commands.splitlines()[1].startswith("make test")
    for heading in ("Quickstart in Python", "Quickstart on the command line", "Tasks and label conventions",
                    "Results at a glance", "Where to go next", "Limits"):
        assert f"## {heading}" in readme, heading


def test_every_link_of_the_readme_and_the_docs_leads_somewhere():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    assert len(pages) > 20
    broken = []
    for page in pages:
        text = page.read_text()
        for target in re.findall(r"\]\((?!https?:)([^)\s]+)\)", text):
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
                broken.append(f"{page.relative_to(ROOT)} -> {target} (no such heading)")
    assert not broken, broken


def test_the_docs_speak_to_users():
    # no internal issue numbers or notes about one particular machine; every benchmark page says how it was run
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = page.read_text()
        for phrase in (r"\bissue \d", r"\bthis machine\b", r"\bthis session\b", r"\bhere today\b"):
            assert not re.search(phrase, text, re.I), f"{page.name}: {phrase}"
    for page in sorted((ROOT / "docs" / "benchmarks").glob("*.md")):
        if page.name != "README.md":
            text = page.read_text()
            for field in ("| command |", "| machine |", "| date |", "| seeds |", "| settings chosen on |"):
                assert field in text, f"{page.name} lacks {field}"


def test_the_readme_python_quickstart_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Quickstart in Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    small = (code.replace("n=2000", "n=64").replace("n=500", "n=32").replace("steps_per_epoch=200", "steps_per_epoch=2")
             .replace("epochs=3", "epochs=1").replace("build_model(tasks)",
                                                     "build_model(tasks, widths=(8, 16), depths=1, embedding_dim=16)"))
    assert small != code
    exec(compile(small, "README.md", "exec"), {})
    assert (tmp_path / "faces.keras").is_file() and (tmp_path / "saved_models" / "faces" / "1").is_dir()


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


def _resolves(dotted: str) -> bool:
    """Whether ``kfacemtl.a.b.c`` names a module, or an attribute of one (a class's method included)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_every_full_kfacemtl_name_in_docstrings_and_docs_exists():
    # cross-references (":class:`~kfacemtl.data.make_dataset`") and imports shown in the guides
    texts = {f"kfacemtl.{m}": inspect.getsource(importlib.import_module(f"kfacemtl.{m}")) for m in MODULES}
    texts.update({str(p.relative_to(ROOT)): p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]})
    names = {(where, m.group(0).rstrip(".")) for where, text in texts.items()
             for m in re.finditer(r"(?<![\w./-])kfacemtl(\.[A-Za-z_]\w*)+", text)}
    names |= {(where, f"{m.group(1)}.{m.group(2)}") for where, text in texts.items()
              for m in re.finditer(r"from (kfacemtl[\w.]*) import (\w+)", text)}
    assert len(names) > 100
    missing = sorted(f"{where}: {name}" for where, name in names if not _resolves(name))
    assert not missing, f"names that kfacemtl does not have: {missing}"
