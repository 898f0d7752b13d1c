"""The quantize stage (`stage.py`): ONNX Runtime dynamic/static INT8 with per-node fp32 fallback; the settings
search (`search.py`) and Intel Neural Compressor's accuracy-aware tuning (`inc.py`)."""
