"""`onnxopt search`: the fastest model within an accuracy budget, as a Pareto front. `space`
(what a trial may choose, as a pipeline spec), `trial` (build, score and time one spec), `cluster`
(trials as Ray tasks, one timing gate per node), `study` (the Optuna study: storage, resume, the
front), `run` (the search loop, `search()`), `formats` (table and plot). Sits beside the CLI, on
top of the pipeline and measurement layers.

`onnxopt.search(model, calibration, ...)` is this package called as a function: the package and
the function share the name the issue and the CLI give them, and importing a submodule would
otherwise replace a function of that name on `onnxopt`."""
import sys
import types

from ..compat import forwarder

__getattr__ = forwarder(__name__, ("run", "space", "study", "trial", "cluster", "formats"))


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from .run import search
        return search(*args, **kwargs)

    @property
    def __signature__(self):
        """search()'s own, for inspect.signature, notebooks' call tips and help() (not *args, **kwargs)."""
        import inspect

        from .run import search
        return inspect.signature(search)


sys.modules[__name__].__class__ = _CallableModule
