"""onnxruntime and the machine: `sessions` builds sessions, runs models, describes and resolves
input shapes; `fidelity` compares outputs (max abs/rel error, cosine, top-1 agreement); `cpu`
tells which CPU this is (x86 with VNNI, AVX-512 or AVX2 only; ARM) and what its kernels do.
Imports only onnxopt.errors."""
from ..compat import forwarder

__getattr__ = forwarder(__name__, ("sessions", "fidelity", "cpu"))
