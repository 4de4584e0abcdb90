"""Calibration and evaluation data: `feeds` (FeedSet: re-iterable batches cut lazily from arrays
of samples), `files` (.npz/.npy files and folders, seeded random data), `images` (folders of
images with a preprocessing spec). Imports onnxopt.runtime for input specs."""
from ..compat import forwarder

__getattr__ = forwarder(__name__, ("files", "feeds", "images"))
