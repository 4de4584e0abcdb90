"""Errors a user can act on. Each carries a one-line message and the exit code the CLI returns.

Exit codes (stable, for CI jobs):
  0  success
  1  internal error (a bug in onnxopt: please report it)
  2  usage error: unknown pass, bad option, bad flag, output path equal to input
  3  bad input: missing/corrupt model, unsupported opset, dynamic shapes, bad data file
  4  --strict and a pass was rolled back or failed; `onnxopt search`: no trial within --max-drop
  5  an output cannot be written (disk full, permission denied)
  130 interrupted (Ctrl-C); no output file is left behind
"""
from __future__ import annotations


class OnnxoptError(Exception):
    """Base class: `str(err)` is a complete one-line message for the user."""

    exit_code = 1


class UsageError(OnnxoptError):
    exit_code = 2


class UnknownPass(UsageError):
    pass


class BadOption(UsageError):
    pass


class BadInput(OnnxoptError):
    exit_code = 3


class BadModel(BadInput):
    pass


class UnsupportedOpset(BadInput):
    pass


class DynamicShape(BadInput):
    pass


class BadData(BadInput):
    pass


class PreconditionError(OnnxoptError):
    """A pass cannot run on this model at all (raised from Pass.requires)."""

    exit_code = 3


class StrictFailure(OnnxoptError):
    exit_code = 4


class NoCandidate(OnnxoptError):
    """`onnxopt search` found no trial within the accuracy budget (the message names the closest)."""
    exit_code = 4


class CannotWrite(OnnxoptError):
    exit_code = 5


def first_line(exc: BaseException, limit: int | None = 300) -> str:
    """The first line of an exception's message (at most `limit` characters), or its type's name
    when the message is empty: what a one-line error quotes of another library's exception."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def one_line(exc: BaseException, limit: int = 300) -> str:
    """`Type: first line of its message` (at most `limit` characters of it): an exception as a
    report or a table can show it."""
    return f"{type(exc).__name__}: {first_line(exc, limit)}"
