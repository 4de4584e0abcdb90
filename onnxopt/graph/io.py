"""Loading with clear errors and atomic saving.

A failed or interrupted save never leaves a half-written file: the model is written to a temporary
file beside the target and moved into place with os.replace, which is atomic on POSIX and Windows.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ..errors import BadModel, CannotWrite, UnsupportedOpset, UsageError, first_line

# Oldest default-domain opset we accept: older graphs use Gemm/BatchNormalization semantics that
# the passes do not model (broadcast attributes, spatial BN).
MIN_OPSET = 7


def max_opset() -> int:
    return onnx.defs.onnx_opset_version()


def default_opset(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return None


def check_opset(model: onnx.ModelProto, where: str = "model") -> int:
    opset = default_opset(model)
    if opset is None:
        raise UnsupportedOpset(f"{where}: no default-domain opset_import; not a model onnxopt can read")
    if opset < MIN_OPSET or opset > max_opset():
        raise UnsupportedOpset(
            f"{where}: opset {opset} is not supported (supported: {MIN_OPSET}..{max_opset()}); "
            "convert it with onnx.version_converter first"
        )
    return opset


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file, or raise BadModel/UnsupportedOpset with a one-line reason."""
    return load_model_and_bytes(path)[0]


def load_model_and_bytes(path: str | os.PathLike) -> tuple[onnx.ModelProto, bytes | None]:
    """Like load_model, plus the file's bytes when they are the whole model (no external data):
    onnxruntime can take them without serializing the model again."""
    p = Path(path)
    if not p.exists():
        raise BadModel(f"{p}: no such file")
    if p.is_dir():
        raise BadModel(f"{p}: is a directory, expected an .onnx file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise BadModel(f"{p}: cannot read ({exc.strerror})") from None
    if not data:
        raise BadModel(f"{p}: file is empty")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise BadModel(f"{p}: not a valid ONNX protobuf (corrupt or truncated): {str(exc)[:120]}") from None
    # Arbitrary bytes sometimes parse as an (almost) empty message; a real model has these.
    if model.ir_version == 0 or not model.HasField("graph") or not model.opset_import:
        raise BadModel(f"{p}: not an ONNX model (no ir_version, graph or opset_import)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        try:
            onnx.load_external_data_for_model(model, str(p.parent))
        except Exception as exc:  # noqa: BLE001 - onnx raises OSError, ValueError or ValidationError
            raise BadModel(f"{p}: external weight data cannot be read: {first_line(exc, None)}") from None
        data = None
    check_opset(model, str(p))
    return model, data


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return os.path.samefile(pa, pb)
    return pa.resolve() == pb.resolve()


def check_output_path(input_path: str | os.PathLike, output_path: str | os.PathLike, overwrite: bool,
                      what: str = "output") -> None:
    """Refuse an output that would replace the input model (unless `overwrite`) or whose folder is
    missing. For outputs that are never models (reports), pass overwrite=False and a `what`."""
    if same_file(input_path, output_path) and not overwrite:
        hint = "; pass --overwrite to allow it" if what == "output" else ""
        raise UsageError(f"{output_path}: {what} would overwrite the input model{hint}")
    parent = Path(output_path).resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{output_path}: directory {parent} does not exist")


def _file_mode(path: Path) -> int:
    """The mode a new file would get (0666 less the umask), or the existing file's mode."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_files(items: list[tuple[str | os.PathLike, bytes]]) -> None:
    """Write several files so that either all of them appear or none does: every file goes to a
    temporary file beside its target first; only when all are on disk are they moved into place."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in items:
            p = Path(path)
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.resolve().parent)
            staged.append((tmp, p))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, _file_mode(p))
        for tmp, p in staged:
            os.replace(tmp, p)
    except OSError as exc:
        raise CannotWrite(f"{exc.filename or items[0][0]}: cannot write ({exc.strerror or exc}); nothing written") \
            from None
    finally:  # includes KeyboardInterrupt: never leave a temporary file behind
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write_files([(path, data)])


def serialize(model: onnx.ModelProto, path: str | os.PathLike = "model") -> bytes:
    try:
        return model.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages > 2 GB
        raise BadModel(f"{path}: model too large to serialize as one protobuf ({exc})") from None


def save_model(model: onnx.ModelProto, path: str | os.PathLike, serialized: bytes | None = None) -> None:
    """Serialize and write atomically. Models over protobuf's 2 GB limit are refused clearly."""
    atomic_write_bytes(path, serialized if serialized is not None else serialize(model, path))
