"""Folders of images as model inputs: a preprocessing spec, decoded lazily one batch at a time.

A spec is a comma list of key=value (lists separated by `|`), e.g. the ImageNet recipe
    resize=256,size=224,mean=0.485|0.456|0.406,std=0.229|0.224|0.225,scale=255
  size=N | HxW     the image size the model takes (default: the model's input H, W)
  resize=N         first scale the shorter side to N (keeping the aspect ratio), then crop the
                   centre size x size; without it, images are resized to size directly
  layout=nchw|nhwc how the model's input is laid out [nchw]
  order=rgb|bgr    channel order [rgb]; 1-channel inputs get grayscale images (order is ignored)
  scale=S          raw pixel values (0..255) are divided by S first [1: raw 0..255 values]
  mean=M[|M|M]     then subtracted, one value or one per channel, in the model's channel
                   order (after order=bgr) [0]
  std=D[|D|D]      then divided by [1]
Images are decoded with Pillow (`pip install onnxopt[images]`), converted to RGB or grayscale,
resized bilinearly (as torchvision's Resize/CenterCrop), then scaled and normalized in float32 and
cast to the model's float type. A uint8 input takes raw pixels: no scale, mean or std.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import BadData, BadOption, first_line
from ..runtime.sessions import input_specs, shape_text
from .feeds import FeedSet, LazyArray, _static_batch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm")
KEYS = ("size", "resize", "layout", "order", "scale", "mean", "std")


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How an image becomes one sample; see the module docstring. size is (H, W)."""

    size: tuple[int, int] | None = None
    resize: int | None = None
    layout: str = "nchw"
    order: str = "rgb"
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        bad = None
        if self.layout not in ("nchw", "nhwc"):
            bad = f"layout={self.layout}: expected nchw or nhwc"
        elif self.order not in ("rgb", "bgr"):
            bad = f"order={self.order}: expected rgb or bgr"
        elif self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            bad = f"size={self.size}: expected a positive N or HxW"
        elif self.resize is not None and self.resize < 1:
            bad = f"resize={self.resize}: expected a positive integer"
        elif self.resize is not None and self.size is not None and self.resize < max(self.size):
            bad = f"resize={self.resize} is smaller than the centre crop size={_hw(self.size)}"
        elif not np.isfinite(self.scale) or self.scale <= 0:
            bad = f"scale={self.scale}: expected a positive number"
        elif not self.mean or not self.std or not np.all(np.isfinite(self.mean + self.std)):
            bad = "mean and std need finite values"
        elif any(v == 0 for v in self.std):
            bad = "std=0 divides by zero"
        if bad:
            raise BadOption(f"preprocess: {bad}")

    @property
    def raw(self) -> bool:
        return self.scale == 1 and all(v == 0 for v in self.mean) and all(v == 1 for v in self.std)

    def __str__(self) -> str:
        parts = [f"size={_hw(self.size)}"] if self.size else []
        parts += [f"resize={self.resize}"] if self.resize else []
        parts += [f"layout={self.layout}", f"order={self.order}", f"scale={self.scale:g}",
                  "mean=" + "|".join(f"{v:g}" for v in self.mean), "std=" + "|".join(f"{v:g}" for v in self.std)]
        return ",".join(parts)


def _hw(size: tuple[int, int]) -> str:
    return str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"


def parse_preprocess(spec: Any) -> Preprocess:
    """A Preprocess from a spec string (see the module docstring), or a Preprocess as it is."""
    if isinstance(spec, Preprocess):
        return spec
    if not isinstance(spec, str):
        raise BadOption(f"preprocess: expected a spec string such as 'size=224,scale=255', got {type(spec).__name__}")
    values: dict[str, Any] = {}
    for item in (i.strip() for i in spec.split(",")):
        if not item:
            continue
        key, sep, value = (s.strip() for s in item.partition("="))
        key, value = key.lower(), value.lower()
        if not sep or not value:
            raise BadOption(f"preprocess '{spec}': '{item}' is not key=value (keys: {', '.join(KEYS)})")
        if key not in KEYS:
            raise BadOption(f"preprocess '{spec}': unknown key '{key}' (keys: {', '.join(KEYS)})")
        if key in values:
            raise BadOption(f"preprocess '{spec}': '{key}' is given twice")
        try:
            if key == "size":
                dims = [int(d) for d in value.split("x")]
                if len(dims) not in (1, 2):
                    raise ValueError
                values[key] = (dims[0], dims[-1])
            elif key == "resize":
                values[key] = int(value)
            elif key == "scale":
                values[key] = float(value)
            elif key in ("mean", "std"):
                values[key] = tuple(float(v) for v in value.split("|"))
            else:
                values[key] = value
        except ValueError:
            hint = {"size": "N or HxW", "resize": "an integer", "scale": "a number"}.get(key, "numbers separated by |")
            raise BadOption(f"preprocess '{spec}': {key}={value}: expected {hint}") from None
    return Preprocess(**values)


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise BadData("reading images needs Pillow: pip install onnxopt[images]") from None
    return Image


def _shape_text(shape) -> str:
    return shape_text(shape)


class ImageArray(LazyArray):
    """Image files as an array of samples [N, C, H, W] or [N, H, W, C], decoded when sliced."""

    def __init__(self, files: list[Path], spec: Preprocess, channels: int, size: tuple[int, int],
                 dtype: np.dtype) -> None:
        self.files, self.spec, self.channels, self.size = files, spec, channels, size
        self.dtype = np.dtype(dtype)
        h, w = size
        self.shape = (len(files), channels, h, w) if spec.layout == "nchw" else (len(files), h, w, channels)
        self._mean = np.asarray(spec.mean, np.float32)
        self._std = np.asarray(spec.std, np.float32)

    def _rows(self, start: int, stop: int) -> np.ndarray:
        if start >= stop:
            return np.empty((0, *self.shape[1:]), self.dtype)
        return np.stack([self.load(f) for f in self.files[start:stop]])

    def load(self, path: Path) -> np.ndarray:
        """One image, preprocessed, without the batch axis."""
        Image = _pil()
        try:
            with Image.open(path) as im:
                im = self._geometry(im.convert("L" if self.channels == 1 else "RGB"), Image)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise BadData(f"{path}: cannot read as an image ({first_line(exc, 120)})") from None
        s = self.spec
        pixels = np.asarray(im, np.uint8 if s.raw else np.float32)
        if self.channels == 1:
            pixels = pixels[..., None]
        elif s.order == "bgr":
            pixels = pixels[..., ::-1]
        if not s.raw:
            if s.scale != 1:
                pixels = pixels / np.float32(s.scale)
            pixels = (pixels - self._mean) / self._std
        if s.layout == "nchw":
            pixels = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(pixels, dtype=self.dtype)

    def _geometry(self, im, Image):
        """torchvision's Resize(resize) + CenterCrop(size), or a plain resize to size."""
        h, w = self.size
        if self.spec.resize is None:
            return im if im.size == (w, h) else im.resize((w, h), Image.BILINEAR)
        width, height = im.size
        short, long = sorted((width, height))
        new_short, new_long = self.spec.resize, int(self.spec.resize * long / short)
        new = (new_short, new_long) if width <= height else (new_long, new_short)
        if new != im.size:
            im = im.resize(new, Image.BILINEAR)
        left, top = int(round((new[0] - w) / 2.0)), int(round((new[1] - h) / 2.0))
        return im.crop((left, top, left + w, top + h))


def image_feeds(files: list[Path], model: onnx.ModelProto, spec: Preprocess, source: str) -> FeedSet:
    """A FeedSet over image files for the model's single 4-D input (see the module docstring)."""
    specs = input_specs(model)
    if len(specs) != 1:
        raise BadData(f"{source}: images feed a model with one input; this one has {[s.name for s in specs]}")
    inp = specs[0]
    shape, name = inp.shape, inp.name
    if shape is None or len(shape) != 4:
        raise BadData(f"{source}: the model's input '{name}' is {_shape_text(shape)}; images feed a 4-D input "
                      "(NCHW or NHWC)")
    nchw = spec.layout == "nchw"
    channels, dims = (shape[1], shape[2:4]) if nchw else (shape[3], shape[1:3])
    if channels not in (1, 3):
        other = shape[3] if nchw else shape[1]
        hint = f" (layout={'nhwc' if nchw else 'nchw'}?)" if other in (1, 3) else ""
        count = channels if isinstance(channels, int) else "?"
        raise BadData(f"{source}: the model's input '{name}' is {_shape_text(shape)}: {count} channels in "
                      f"layout={spec.layout}; images give 1 (grayscale) or 3 (RGB/BGR){hint}")
    for what, values in (("mean", spec.mean), ("std", spec.std)):
        if len(values) not in (1, channels):
            raise BadData(f"{source}: {what} has {len(values)} values for the {channels} channels of the model's "
                          f"input '{name}' {_shape_text(shape)}")
    fixed = all(isinstance(d, int) and d > 0 for d in dims)
    size = spec.size or (tuple(dims) if fixed else None)
    batch = _static_batch(specs)
    if size is None:
        raise BadData(f"{source}: the model's input '{name}' is {_shape_text(shape)}: give the image size "
                      "(preprocess size=N or HxW)")
    if spec.resize is not None and spec.resize < max(size):
        raise BadOption(f"preprocess: resize={spec.resize} is smaller than the centre crop {_hw(size)}")
    if fixed and tuple(dims) != tuple(size):
        made = [batch, channels, *size] if nchw else [batch, *size, channels]
        raise BadData(f"{source}: size={_hw(size)} makes inputs of shape {made}, the model wants "
                      f"{_shape_text(shape)}")
    dtype = np.dtype(inp.dtype)
    if not np.issubdtype(dtype, np.floating) and not (dtype == np.uint8 and spec.raw):
        raise BadData(f"{source}: the model's input '{name}' is {dtype}; images feed float inputs, or uint8 ones "
                      "with raw pixels (no scale, mean or std)")
    _pil()  # a missing Pillow is reported now, not at the first batch
    array = ImageArray(files, spec, channels, size, dtype)
    feeds = FeedSet({name: array}, batch, None, source)
    if len(feeds) == 0:
        raise BadData(f"{source}: fewer images ({len(files)}) than one batch of {batch}")
    return feeds
