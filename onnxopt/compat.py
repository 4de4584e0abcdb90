"""Module paths of onnxopt 0.1 that moved when onnxopt/ was regrouped into layers (0.2), kept
importable for one release with a DeprecationWarning naming the new home. `from onnxopt.registry
import register_pass` still works; the next release drops these names.

Also the lazy name lookup the layer packages use, so that `from onnxopt.pipeline import Pipeline`
keeps working without each package importing all its modules up front (start-up time)."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

# old module -> the modules that now hold its names (the first is its main home)
MOVED: dict[str, tuple[str, ...]] = {
    "onnxopt.io": ("onnxopt.graph.io",),
    "onnxopt.qdq": ("onnxopt.graph.qdq",),
    "onnxopt.shrink": ("onnxopt.graph.shrink",),
    "onnxopt.cpu": ("onnxopt.runtime.cpu",),
    "onnxopt.verify": ("onnxopt.runtime.fidelity",),
    "onnxopt.images": ("onnxopt.data.images",),
    "onnxopt.registry": ("onnxopt.pipeline.spec", "onnxopt.pipeline.registry"),
    "onnxopt.options": ("onnxopt.pipeline.options",),
    "onnxopt.tolerance": ("onnxopt.pipeline.tolerance",),
    "onnxopt.report": ("onnxopt.pipeline.report", "onnxopt.text"),
    "onnxopt.bench": ("onnxopt.measure.timing",),
    "onnxopt.sidebyside": ("onnxopt.measure.sidebyside",),
    "onnxopt.bench_report": ("onnxopt.measure.formats",),
    "onnxopt.memory": ("onnxopt.measure.memory",),
}


def forwarder(package: str, modules: Sequence[str]) -> Callable[[str], Any]:
    """A module __getattr__ (PEP 562) for a layer package: a name is looked up in `modules` (in
    order, imported on first use); a submodule name imports the submodule."""
    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")
        for module in modules:
            found = importlib.import_module(f"{package}.{module}")
            if hasattr(found, name):
                value = getattr(found, name)
                setattr(sys.modules[package], name, value)
                return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as a thin module that forwards every name to its new home."""

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001 - importlib's signature
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):  # noqa: ANN001
        return None

    def exec_module(self, module) -> None:  # noqa: ANN001
        homes = MOVED[module.__name__]
        warnings.warn(f"{module.__name__} is now {homes[0]}; the old path goes away in the next release",
                      DeprecationWarning, stacklevel=2)

        def __getattr__(name: str) -> Any:
            for home in homes:
                found = importlib.import_module(home)
                if hasattr(found, name):
                    return getattr(found, name)
            raise AttributeError(f"module {module.__name__!r} (now {homes[0]}) has no attribute {name!r}")
        module.__getattr__ = __getattr__
        module.__doc__ = f"Deprecated alias of {homes[0]}."


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
