"""Typed pass options: one frozen dataclass per pass serves the CLI string (`prune:ratio=0.3`),
pipeline files (YAML/JSON values) and Python keyword arguments alike.

Field names are snake_case in Python and kebab-case on the command line (`round_to` / `round-to`);
both spellings are accepted everywhere. A field's help text lives in `metadata={"help": ...}`.
List values are written `a|b|c` on the command line (commas separate options).
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, get_args, get_origin

from ..errors import BadOption

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def option(default: Any, help: str, *, aliases: tuple[str, ...] = ()) -> Any:  # noqa: A002 - argparse naming
    """Declare an option field with a default and a one-line help text. `aliases` are other
    spellings accepted on input (`global` for a field that cannot be named after a keyword)."""
    metadata = {"help": help, "aliases": aliases}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def cli_name(field_name: str) -> str:
    return field_name.replace("_", "-")


def _resolved_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(pass_name: str, key: str, tp: Any, value: Any) -> Any:
    where = f"{pass_name}: option '{cli_name(key)}'"
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) < len(get_args(tp)) and (
                value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))):
            return None
        problem = None
        for a in args:  # the first member type that takes the value: `int | Literal["auto"]`
            try:
                return _coerce(pass_name, key, a, value)
            except BadOption as exc:
                problem = problem or exc
        if len(args) > 1:
            raise BadOption(f"{where} expects {_type_name(tp)}, got {value!r}")
        raise problem
    if origin is Literal:
        choices = get_args(tp)
        if value in choices and not isinstance(value, bool):
            return value
        text = str(value)
        for match in (lambda c: str(c) == text, lambda c: str(c).lower() == text.lower()):
            found = [c for c in choices if match(c)]
            if len(found) == 1:
                return found[0]
        raise BadOption(f"{where} must be one of {', '.join(map(str, choices))}, got {value!r}")
    if origin in (tuple, list):
        (item_tp, *_rest) = get_args(tp) or (str,)
        items = value.split("|") if isinstance(value, str) else list(value)
        return tuple(_coerce(pass_name, key, item_tp, v) for v in items if v != "")
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise BadOption(f"{where} expects true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise BadOption(f"{where} expects a number, got {value!r}")
        try:
            number = tp(value) if tp is float else int(str(value).strip()) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise BadOption(f"{where} expects {'an integer' if tp is int else 'a number'}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != int(value):
            raise BadOption(f"{where} expects an integer, got {value!r}")
        return number
    if tp is str:
        return str(value)
    return value


def build_options(pass_name: str, cls: type, values: dict[str, Any], base: Any = None) -> Any:
    """Make an Options instance from raw values (strings from the CLI or typed values)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    aliases = {a.replace("-", "_"): f.name for f in fields.values() for a in f.metadata.get("aliases", ())}
    types_ = _resolved_types(cls)
    kwargs: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        key = aliases.get(key, key)
        if key not in fields:
            known = [cli_name(k) for k in fields]
            close = difflib.get_close_matches(cli_name(key), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            listing = f" (options: {', '.join(known)})" if known else " (it takes no options)"
            raise BadOption(f"{pass_name}: unknown option '{cli_name(key)}'{hint}{listing}")
        kwargs[key] = _coerce(pass_name, key, types_[key], value)
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise BadOption(f"{pass_name}: {exc}") from None


def describe(cls: type) -> list[dict[str, Any]]:
    """Option table for `list-passes` and docs: name, type, default, help."""
    types_ = _resolved_types(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append({"name": cli_name(f.name), "type": _type_name(types_[f.name]), "default": default,
                     "help": f.metadata.get("help", "")})
    return rows


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "|".join(map(str, get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        optional = type(None) in get_args(tp)
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None)) + (" or none" if optional else "")
    if origin in (tuple, list):
        return "list of " + _type_name((get_args(tp) or (str,))[0])
    return getattr(tp, "__name__", str(tp))


def to_dict(options: Any) -> dict[str, Any]:
    return {cli_name(k): list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()}


def check_patterns(what: str, patterns) -> None:
    """Raise ValueError naming the first pattern that is not a valid regex (options that take node
    names, regexes or op types)."""
    import re

    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{what} pattern {pattern!r}: {exc}") from None
