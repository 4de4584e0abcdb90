"""Pass registry and the pipeline spec language.

Spec strings: passes separated by commas, options after a colon, more options after further commas:
    "fold-bn,cleanup"            "prune:ratio=0.3,round-to=8,quantize"
A comma-separated item with '=' and no ':' is another option of the pass before it.

Pipeline files (YAML or JSON) hold the same thing as data:
    passes:
      - fold-bn
      - name: prune
        ratio: 0.3
        round-to: 8
    verify: true           # optional run settings, see load_config()
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from ..errors import BadInput, BadOption, UnknownPass, UsageError, first_line
from . import registry as _registry
from .contract import Pass


def _load_builtin() -> None:
    from .. import passes  # noqa: F401 - importing registers the built-in passes


def available_passes() -> dict[str, type[Pass]]:
    _load_builtin()
    return dict(_registry._REGISTRY)


def get_pass(name: str) -> type[Pass]:
    registry = available_passes()
    if name in registry:
        return registry[name]
    normalized = name.strip().lower().replace("_", "-")
    if normalized in registry:
        return registry[normalized]
    close = difflib.get_close_matches(normalized, list(registry), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise UnknownPass(f"unknown pass '{name}'{hint} (available: {', '.join(sorted(registry))})")


def make_pass(name: str, values: dict[str, Any] | None = None) -> Pass:
    return get_pass(name).from_values(values or {})


def parse_spec(spec: str) -> list[Pass]:
    """Parse "fold-bn,prune:ratio=0.3,round-to=8" into pass instances."""
    items: list[tuple[str, dict[str, str]]] = []
    for raw in spec.split(","):
        token = raw.strip()
        if not token:
            continue
        if ":" in token:
            name, _, opt = token.partition(":")
            items.append((name.strip(), {}))
            token = opt.strip()
            if not token:
                continue
        if "=" in token:
            if not items:
                raise BadOption(f"option '{token}' comes before any pass name in '{spec}'")
            key, _, value = token.partition("=")
            items[-1][1][key.strip()] = value.strip()
        else:
            items.append((token, {}))
    if not items:
        raise UsageError("no passes given (e.g. --passes fold-bn,cleanup; see `onnxopt list-passes`)")
    return [make_pass(name, values) for name, values in items]


RUN_SETTINGS = {"verify", "rtol", "samples", "seed", "input_shapes", "threads", "calib", "preprocess"}


def load_config(path: str | Path) -> tuple[list[Pass], dict[str, Any]]:
    """Read a pipeline file (.yaml/.yml/.json). Returns the passes and any run settings it sets."""
    try:
        return _load_config(Path(path))
    except (UsageError, BadInput) as exc:
        if str(exc).startswith(str(path)):
            raise
        raise type(exc)(f"{path}: {exc}") from None


def _load_config(p: Path) -> tuple[list[Pass], dict[str, Any]]:
    if not p.is_file():
        raise BadInput(f"{p}: no such pipeline file")
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - yaml and json raise different types
        raise BadInput(f"{p}: cannot parse pipeline file: {first_line(exc, None)}") from None
    if isinstance(data, list):
        data = {"passes": data}
    if not isinstance(data, dict) or "passes" not in data:
        raise BadInput(f"{p}: a pipeline file needs a 'passes' list")
    entries = data["passes"]
    if isinstance(entries, str):
        return parse_spec(entries), _settings(p, data)
    if not isinstance(entries, list) or not entries:
        raise BadInput(f"{p}: 'passes' must be a non-empty list")
    passes = []
    for entry in entries:
        if isinstance(entry, str):
            passes.extend(parse_spec(entry))
        elif isinstance(entry, dict) and "name" in entry:
            values = {k: v for k, v in entry.items() if k != "name"}
            nested = values.pop("options", None)
            if nested is not None and not isinstance(nested, dict):
                raise BadInput(f"{p}: 'options' of pass {entry['name']!r} must be a mapping, got {nested!r}")
            values.update(nested or {})
            passes.append(make_pass(str(entry["name"]), values))
        elif isinstance(entry, dict) and len(entry) == 1:  # {"prune": {"ratio": 0.3}}
            (name, values), = entry.items()
            if values is not None and not isinstance(values, dict):
                raise BadInput(f"{p}: options of pass {name!r} must be a mapping, got {values!r}")
            passes.append(make_pass(str(name), values or {}))
        else:
            raise BadInput(f"{p}: cannot read pass entry {entry!r}")
    return passes, _settings(p, data)


def _settings(p: Path, data: dict) -> dict[str, Any]:
    settings = {str(k).replace("-", "_"): v for k, v in data.items() if k != "passes"}
    if "calib" in settings and str(settings["calib"]) != "random":  # relative to the pipeline file, like an include
        settings["calib"] = p.parent / str(settings["calib"])
    unknown = set(settings) - RUN_SETTINGS
    if unknown:
        raise BadInput(f"{p}: unknown setting(s) {', '.join(sorted(unknown))} (known: passes, "
                       f"{', '.join(sorted(s.replace('_', '-') for s in RUN_SETTINGS))})")
    return settings
