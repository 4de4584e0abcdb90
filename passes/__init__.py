"""Built-in passes, installed as `onnxopt.passes`. Importing this package registers them."""
if __name__ != "onnxopt.passes":  # the repo root on sys.path (e.g. `python -m pytest`) would import us twice
    raise ImportError(f"import this package as 'onnxopt.passes', not {__name__!r}")

from . import cleanup, fold_bn, prune, quantize, reparam, simplify  # noqa: E402,F401  (registration happens on import)
from .cleanup import Cleanup  # noqa: E402
from .fold_bn import FoldBatchNorm  # noqa: E402
from .prune import Prune  # noqa: E402
from .quantize import Quantize  # noqa: E402
from .reparam import Reparameterize  # noqa: E402
from .simplify import Simplify  # noqa: E402

__all__ = ["Cleanup", "FoldBatchNorm", "Prune", "Quantize", "Reparameterize", "Simplify"]
