"""The pass contract and the pipeline that runs passes: `contract` (Pass, PassContext,
PassResult, Skip), `options` (typed pass options), `registry` (@register_pass), `spec` (pipeline
strings and config files; looks passes up, importing the built-ins), `run` (Pipeline: shapes,
verification, per-region rollback, reports), `tolerance` (the model's own float noise floor),
`report` (run reports as text)."""
from ..compat import forwarder

__getattr__ = forwarder(__name__, ("run", "contract", "spec", "registry", "options", "tolerance", "report"))
