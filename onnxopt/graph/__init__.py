"""The graph layer: every edit of an ONNX protobuf happens here. `core` is the editable graph
(Graph, Node: producers, consumers, initializers, rewiring), `io` loads and writes models
atomically, `qdq` builds QuantizeLinear/DequantizeLinear pairs, `shrink` removes channels the
channel analysis chose, `dims` renames dims exporters write as 0/-1, `ops` holds the op facts
surgery and analysis share. Imports only onnxopt.errors (and the analysis' types for shrink)."""
from ..compat import forwarder

__getattr__ = forwarder(__name__, ("core", "io", "qdq", "shrink", "dims", "ops"))
