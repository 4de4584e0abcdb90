"""The layering ARCHITECTURE.md promises, checked on the source: no import cycle between modules
of onnxopt/ and passes/, and each layer imports only the layers below it. Imports inside
`if TYPE_CHECKING:` blocks are annotations, not dependencies, and are not counted; imports inside
functions are (a deferred import is still a dependency)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"onnxopt": ROOT / "onnxopt", "onnxopt.passes": ROOT / "passes"}

# layer -> the layers it may import (onnxopt.<layer>; "passes" is onnxopt.passes). cli, testing and the
# package root sit on top and may import anything; models (the bundled zoo) is not part of the layering.
SHARED = {"errors", "text", "compat"}  # the exceptions, text formatting, the old module paths: below everything
MAY_IMPORT = {
    "errors": set(),
    "text": set(),
    "compat": set(),
    "graph": SHARED,
    "runtime": {"graph"} | SHARED,
    "analysis": {"graph"} | SHARED,
    "data": {"runtime"} | SHARED,
    "measure": {"runtime", "data", "graph", "analysis"} | SHARED,
    "pipeline": {"graph", "runtime", "data", "analysis", "passes"} | SHARED,
    "passes": {"pipeline", "graph", "runtime", "analysis", "measure", "data"} | SHARED,
    "search": {"pipeline", "graph", "runtime", "analysis", "measure", "data"} | SHARED,
}
# the one module of the pipeline that knows the built-in passes (it imports them to register them),
# and the only modules of the pipeline a pass may import
PIPELINE_IMPORTS_PASSES = {"onnxopt.pipeline.spec"}
PASSES_MAY_USE = {"onnxopt.pipeline.contract", "onnxopt.pipeline.options", "onnxopt.pipeline.registry"}


def _modules() -> dict[str, Path]:
    found = {}
    for prefix, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if prefix == "onnxopt" and parts and parts[0] in ("passes", "models"):
                continue
            found[".".join([prefix, *parts])] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `module` imports at run time."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
               for child in node.body for n in ast.walk(child)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from pkg import submodule` depends on the submodule; `from pkg import name` on pkg
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, set(modules)) for m, p in modules.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) == 1:
        return None  # the package root: the public API, on top
    return parts[1]


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if d in graph and d not in ("onnxopt",) and m != "onnxopt":
                if state.get(d) == 1:
                    cycles.append(path[path.index(d):] + [d] if d in path else [m, d])
                elif d not in state:
                    visit(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    assert len(graph) > 40  # the walk found the modules


def test_each_layer_imports_only_the_layers_below():
    wrong = []
    for module, deps in _graph().items():
        layer = _layer(module)
        if layer not in MAY_IMPORT:
            continue
        for d in deps:
            other = _layer(d)
            if other is None or other == layer or other == "models":
                if other is None and layer not in ("cli", "testing"):
                    wrong.append(f"{module} -> {d} (the package root is the public API, on top)")
                continue
            if other not in MAY_IMPORT[layer]:
                wrong.append(f"{module} -> {d}")
            elif layer == "pipeline" and other == "passes" and module not in PIPELINE_IMPORTS_PASSES:
                wrong.append(f"{module} -> {d} (only {', '.join(PIPELINE_IMPORTS_PASSES)} loads the built-ins)")
            elif layer == "passes" and other == "pipeline" and d not in PASSES_MAY_USE:
                wrong.append(f"{module} -> {d} (a pass uses the contract, options and registry only)")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_protobuf_is_built_only_in_the_graph_layer():
    """Protobuf surgery lives in the graph layer: elsewhere no node, graph, value info or
    initializer is made and no proto is copied into (onnx.helper's type lookups are fine)."""
    surgery = re.compile(r"helper\.make_(node|graph|model|tensor|empty_tensor|opsetid|attribute)|"
                         r"numpy_helper\.from_array|\.CopyFrom\(")
    found = [module for module, path in _modules().items()
             if not module.startswith("onnxopt.graph") and module != "onnxopt.testing"  # builds test models
             and surgery.search(path.read_text())]
    assert not found, found


def test_the_code_map_names_every_package_and_the_readme_links_it():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    packages = sorted({p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "onnxopt").rglob("__init__.py")}
                      | {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "passes").rglob("__init__.py")})
    missing = [p for p in packages if f"`{p}/`" not in text and f"`{p.split('/', 1)[-1]}/`" not in text]
    assert not missing, missing
    for layer in MAY_IMPORT:  # every layer of the enforced table is described
        assert f"{layer}" in text, layer
    assert "(ARCHITECTURE.md)" in (ROOT / "README.md").read_text()
    assert len(text.split()) < 1600  # a five-minute read
