"""The pass registry: `@register_pass` files a Pass class under its name. Looking passes up
(which first imports the built-ins) is onnxopt.pipeline.spec's job."""
from __future__ import annotations

from .contract import Pass

_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator. A second pass with the same name is an error (it would shadow the first)."""
    name = getattr(cls, "name", None)
    if not name or not isinstance(name, str):
        raise TypeError(f"{cls.__name__}: a pass needs a string `name`")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"pass '{name}' registered twice ({existing.__module__}.{existing.__qualname__} "
                         f"and {cls.__module__}.{cls.__qualname__})")
    _REGISTRY[name] = cls
    return cls
