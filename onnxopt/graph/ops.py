"""Facts about ONNX ops that channel surgery and channel analysis share."""
from __future__ import annotations

# inputs (by index) holding one value per channel (or a broadcastable scalar)
PER_CHANNEL_PARAMS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2), "PRelu": (1,)}


ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow"})
