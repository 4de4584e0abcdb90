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

from .errors import OnnxoptError

__version__ = "0.1.0"

# name -> (module, attribute): imported on first use, so that `onnxopt --help` and `import onnxopt`
# do not pay for onnx, onnxruntime and numpy until something needs them (PEP 562)
_LAZY = {
    "Graph": (".graph", "Graph"), "Node": (".graph", "Node"),
    "load": (".io", "load_model"), "save": (".io", "save_model"),
    **{name: (".pipeline", name) for name in ("Pass", "PassContext", "PassReport", "PassResult", "Pipeline",
                                              "RunReport", "RunResult", "Skip", "run_passes")},
    "option": (".options", "option"),
    **{name: (".registry", name) for name in ("available_passes", "get_pass", "load_config", "parse_spec",
                                              "register_pass")},
}

__all__ = [
    "Graph", "Node", "OnnxoptError", "Pass", "PassContext", "PassReport", "PassResult", "Pipeline", "RunReport",
    "RunResult", "Skip", "available_passes", "get_pass", "load", "load_config", "option", "parse_spec",
    "register_pass", "run_passes", "save", "__version__",
]


# submodules that `import onnxopt; onnxopt.pipeline....` reached when this file imported them eagerly
_SUBMODULES = {"analysis", "bench", "bench_report", "cli", "cpu", "data", "errors", "graph", "images", "io",
               "memory", "models", "options", "passes", "pipeline", "qdq", "registry", "report", "runtime",
               "shrink", "sidebyside", "testing", "tolerance", "verify"}


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
    from .graph import Graph, Node
    from .io import load_model as load
    from .io import save_model as save
    from .options import option
    from .pipeline import Pass, PassContext, PassReport, PassResult, Pipeline, RunReport, RunResult, Skip, run_passes
    from .registry import available_passes, get_pass, load_config, parse_spec, register_pass
