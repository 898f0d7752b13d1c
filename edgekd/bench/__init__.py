"""The sign-off benchmark: a worker that measures one model per process, and the statistics of its numbers.

Nothing here imports torch at import time: the worker for an ONNX model must measure an ONNX-only process.
"""

from __future__ import annotations
