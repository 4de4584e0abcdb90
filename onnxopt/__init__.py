"""onnxopt: an ONNX graph-rewriting optimizer for CNN deployment.

    import onnxopt
    model = onnxopt.load("model.onnx")
    result = onnxopt.Pipeline.parse("fold-bn,cleanup").run(model)
    onnxopt.save(result.model, "out.onnx")
    print(result.report.passes[0].stats)
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import compat
from .errors import OnnxoptError

compat.install()

__version__ = "0.2.0"

# name -> (module, attribute): imported on first use, so that `onnxopt --help` and `import onnxopt`
# do not pay for onnx, onnxruntime and numpy until something needs them (PEP 562)
_LAZY = {
    "Graph": (".graph.core", "Graph"), "Node": (".graph.core", "Node"),
    "load": (".graph.io", "load_model"), "save": (".graph.io", "save_model"),
    **{name: (".pipeline.contract", name) for name in ("Pass", "PassContext", "PassResult", "Skip")},
    **{name: (".pipeline.run", name) for name in ("PassReport", "Pipeline", "RunReport", "RunResult", "run_passes")},
    "option": (".pipeline.options", "option"),
    "register_pass": (".pipeline.registry", "register_pass"),
    **{name: (".pipeline.spec", name) for name in ("available_passes", "get_pass", "load_config", "parse_spec")},
}

__all__ = [
    "Graph", "Node", "OnnxoptError", "Pass", "PassContext", "PassReport", "PassResult", "Pipeline", "RunReport",
    "RunResult", "Skip", "available_passes", "get_pass", "load", "load_config", "option", "parse_spec",
    "register_pass", "run_passes", "save", "search", "__version__",
]


# the layers, and (deprecated, see onnxopt.compat) the flat modules of 0.1 they replaced
_SUBMODULES = {"analysis", "cli", "compat", "data", "errors", "graph", "measure", "models", "passes", "pipeline",
               "runtime", "search", "testing", "text", *(name.rsplit(".", 1)[1] for name in compat.MOVED)}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module, __name__), attribute)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'onnxopt' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)


if TYPE_CHECKING:
    from .graph.core import Graph, Node
    from .graph.io import load_model as load
    from .graph.io import save_model as save
    from .pipeline.contract import Pass, PassContext, PassResult, Skip
    from .pipeline.options import option
    from .pipeline.registry import register_pass
    from .pipeline.run import PassReport, Pipeline, RunReport, RunResult, run_passes
    from .pipeline.spec import available_passes, get_pass, load_config, parse_spec
