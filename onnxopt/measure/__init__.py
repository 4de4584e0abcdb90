"""Measurement, the `onnxopt bench` subsystem: `timing` (interleaved rounds, runners, the
machine description), `sidebyside` (models timed side by side with fidelity and accuracy: the
engine of `onnxopt bench`), `formats` (its tables, JSON, CSV, Markdown, plot), `memory` (peak
session memory in a child process). Never imported by the graph layer."""
from ..compat import forwarder

__getattr__ = forwarder(__name__, ("sidebyside", "timing", "formats", "memory"))
