"""onnxopt: an ONNX graph-rewriting optimizer for CNN deployment.

    import onnxopt
    model = onnxopt.load("model.onnx")
    result = onnxopt.Pipeline.parse("fold-bn,cleanup").run(model)
    onnxopt.save(result.model, "out.onnx")
    print(result.report.passes[0].stats)
"""
from .errors import OnnxoptError
from .graph import Graph, Node
from .io import load_model as load
from .io import save_model as save
from .pipeline import Pass, PassContext, PassReport, PassResult, Pipeline, RunReport, RunResult, Skip, run_passes
from .options import option
from .registry import available_passes, get_pass, load_config, parse_spec, register_pass

__version__ = "0.1.0"

__all__ = [
    "Graph", "Node", "OnnxoptError", "Pass", "PassContext", "PassReport", "PassResult", "Pipeline", "RunReport",
    "RunResult", "Skip", "available_passes", "get_pass", "load", "load_config", "option", "parse_spec",
    "register_pass", "run_passes", "save", "__version__",
]
