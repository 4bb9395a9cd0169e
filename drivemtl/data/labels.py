"""Class list and label encoding shared by every task."""

DEFAULT_CLASSES: tuple[str, ...] = ("pedestrian", "car", "stop_sign", "traffic_light")

POSITIVE = 1
NEGATIVE = 0
UNKNOWN = -1
"""Encoding of a presence label in tensors: ``?`` is -1 and is masked out of losses and metrics."""

UNKNOWN_TOKEN = "?"
