"""The package's shape: imports flow one way through the layers, without cycles; modules stay short; the code uses
Keras's public API (a private name only in a named workaround) and never writes an object's __dict__."""
import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kfacemtl"
# lowest first: a module imports only from its own layer and the layers before it (serving and analysis are siblings)
LAYERS = {"core": 0, "data": 1, "models": 2, "analysis": 3, "serving": 3, "training": 4, "cli": 5}
CORE = {"errors", "files", "tables", "tasks", "version"}
# the named workarounds of Keras bugs: (module, private Keras name) with the issue in a comment beside it
WORKAROUNDS = {("kfacemtl.models.steps", "_maybe_symbolic_build"): "keras-team/keras#20585",
               ("kfacemtl.models.steps", "_symbolic_build"): "keras-team/keras#20585"}


def modules() -> dict:
    """{dotted module name: (path, source)} of every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (path, path.read_text())
    return out


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else "cli"
    return LAYERS["core" if part in CORE else part if part in LAYERS else "cli"]


def import_graph() -> dict:
    """{module: set of kfacemtl modules it imports} (at any depth of the file, resolved to modules that exist)."""
    mods = modules()
    graph = {}
    for name, (_, source) in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(source)):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kfacemtl"):
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("kfacemtl")]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
                    break
        graph[name] = deps
    return graph


def depth(graph: dict) -> dict:
    """The longest chain of imports below each module (0: imports nothing of the package)."""
    memo = {}

    def visit(m, path=()):
        assert m not in path, "import cycle: " + " -> ".join((*path, m))
        if m not in memo:
            memo[m] = 1 + max((visit(d, (*path, m)) for d in graph[m]), default=-1)
        return memo[m]
    for m in graph:
        visit(m)
    return memo


def test_imports_flow_one_way_through_the_layers_without_cycles():
    graph = import_graph()
    levels = depth(graph)  # asserts there is no cycle
    upward = [f"{m} -> {d}" for m, deps in graph.items() for d in deps
              if m not in ("kfacemtl", "kfacemtl.__main__") and layer(d) > layer(m)
              and not (m.startswith("kfacemtl.data") and d == "kfacemtl.data")]
    assert not upward, f"imports against the layers {LAYERS}: {upward}"
    sideways = [f"{m} -> {d}" for m, deps in graph.items() for d in deps
                if {m.split(".")[1:2][0] if "." in m else "", d.split(".")[1]} == {"serving", "analysis"}]
    assert not sideways, f"serving and analysis are siblings: {sideways}"
    assert max(levels.values()) <= 16


def test_every_module_is_short_enough_to_read_in_a_sitting():
    long = {name: source.count("\n") for name, (_, source) in modules().items() if source.count("\n") > 500}
    assert not long, f"modules over 500 lines: {long}"


PUBLIC_BY_DESIGN = {"_replace", "_fields", "_asdict"}  # namedtuple's documented API


def keras_private_names() -> set:
    import keras
    bases = (keras.Model, keras.layers.Layer, keras.callbacks.Callback, keras.losses.Loss, keras.metrics.Metric,
             keras.optimizers.Optimizer)
    return {n for base in bases for n in dir(base) if re.fullmatch(r"_[a-z]\w*", n)}


def test_no_dict_writes_and_no_private_keras_names_outside_the_named_workarounds():
    mods = modules()
    keras_names = keras_private_names()
    ours = set(PUBLIC_BY_DESIGN)  # private names the package defines itself (not overriding Keras's)
    found = []
    for name, (_, source) in mods.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.startswith("_"):
                if node.name in keras_names and not node.name.startswith("__"):
                    found.append((name, node.name))  # an override of a private Keras method
                else:
                    ours.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_"):
                ours.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id.startswith("_"):
                ours.add(node.id)
    for name, (path, source) in mods.items():
        assert not re.search(r"__dict__\s*\[", source), f"{name} writes an object's __dict__"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Attribute) and re.fullmatch(r"_[a-z]\w*", node.attr) and node.attr not in ours:
                found.append((name, node.attr))
    unnamed = [f for f in found if f not in WORKAROUNDS]
    assert not unnamed, f"private names of other libraries: {unnamed}"
    for (name, attr), issue in WORKAROUNDS.items():
        assert issue in mods[name][1], f"{name} uses {attr} without naming {issue}"
