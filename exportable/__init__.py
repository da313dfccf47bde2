"""assignlab's tensor library: batched, ONNX-exportable label assignment for object detection.

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2`` everywhere.
"""

from exportable._checks import checks_disabled

__version__ = "0.1.0"

__all__ = ["__version__", "checks_disabled"]
