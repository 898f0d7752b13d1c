"""The optional PyTorch INT8 path through Intel Neural Compressor 3.x autotune (PT2E dynamic quantization)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("neural_compressor")

from edgekd.stages.quantize.inc import autotune_pytorch_int8

TOY = Path(__file__).resolve().parent.parent / "recipes" / "data" / "toy_topics"


@pytest.mark.slow
def test_autotune_quantizes_within_the_tolerable_loss_and_saves_a_loadable_model(
    tiny_classifier_dir, tmp_path
):
    import torch
    from neural_compressor.torch.algorithms import pt2e_quant

    labels = (TOY / "labels.txt").read_text().split()
    rows = [json.loads(line) for line in (TOY / "validation.jsonl").read_text().splitlines()]
    texts, gold = [r["text"] for r in rows], [labels.index(r["label"]) for r in rows]
    result = autotune_pytorch_int8(tiny_classifier_dir, texts, gold, tmp_path / "inc", 0.01, max_length=32)
    assert result.int8_accuracy >= result.fp32_accuracy * 0.99
    record = json.loads((tmp_path / "inc" / "inc.json").read_text())
    assert record["int8_accuracy"] == result.int8_accuracy
    loaded = pt2e_quant.load(str(tmp_path / "inc"))
    ids = torch.ones((1, 32), dtype=torch.long)
    assert loaded(ids, torch.ones_like(ids))[0].shape == (1, len(labels))
