"""Optional: accuracy-aware PyTorch INT8 with Intel Neural Compressor 3.x (`neural-compressor[pt]`).

Not part of the pipeline (the shipped artifact is the ONNX folder); this is for users who deploy PyTorch. INC 3.10's
PyTorch `DynamicQuantConfig` is the PT2E flow: the model must first be captured with
`neural_compressor.torch.export.export(model, example_inputs, dynamic_shapes)`, then
`autotune(exported, TuningConfig(config_set=[...], tolerable_loss=...), eval_fn=..., run_fn=...)` quantizes it and
checks `eval_fn` against the fp32 score. Two things found by trying it here: `run_fn` (a calibration pass) is
required even for *dynamic* quantization, or the observers keep default scales and accuracy collapses to
chance; and autotune returns its best trial even when it misses `tolerable_loss`, so the result is checked
again here. The result is a `torch.fx.GraphModule` in QDQ form (INC logs "please compile
it to accelerate inference": without `torch.compile` it simulates INT8 and is not faster than fp32). It is
saved with INC's `pt2e_quant.save` (`quantized_weight.pt`, a torch.export program, + `qconfig.json`; edgekd adds
`inc.json` with the accuracies) and loaded back with
`neural_compressor.torch.algorithms.pt2e_quant.load(folder)`.

Checked offline on CPU here (torch 2.13, INC 3.10, tiny BERT): export, autotune, evaluation and save all work.
Sequence-length must be bounded for export (`max_length`); inputs are padded to it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekd.errors import MissingDependencyError, StageError

# Texts run through the prepared model to set activation ranges before conversion.
CALIBRATION_TEXTS = 64


@dataclass(frozen=True)
class IncResult:
    """What `autotune_pytorch_int8` produced."""

    out_dir: Path
    fp32_accuracy: float
    int8_accuracy: float
    tolerable_loss: float


def autotune_pytorch_int8(
    model_dir: str | Path,
    eval_texts: list[str],
    labels: list[int],
    out_dir: str | Path,
    tolerable_loss: float = 0.01,
    max_length: int = 128,
) -> IncResult:
    """Quantize a Hugging Face sequence classifier with INC's accuracy-aware autotune (PT2E dynamic INT8).

    Args:
        model_dir: A local `*ForSequenceClassification` folder (e.g. a run's distill/model).
        eval_texts: Texts to measure accuracy on (validation).
        labels: Their gold class ids.
        out_dir: Where `quantized_weight.pt`, `qconfig.json` and `inc.json` go.
        tolerable_loss: Relative accuracy loss INC accepts (0.01 = 1% of the fp32 accuracy).
        max_length: Padding/truncation length (the exported graph's largest sequence).

    Raises:
        MissingDependencyError: neural-compressor is not installed.
        StageError: autotune found no configuration within `tolerable_loss`, or INC failed.
    """
    try:
        from neural_compressor.torch.algorithms import pt2e_quant
        from neural_compressor.torch.export import export
        from neural_compressor.torch.quantization import DynamicQuantConfig, TuningConfig, autotune
    except ImportError as exc:
        raise MissingDependencyError("neural_compressor") from exc
    import torch

    from edgekd.models import load_classifier, load_tokenizer

    model = load_classifier(str(model_dir)).float().eval()
    model.config.return_dict = False  # PT2E export wants plain tuples
    tokenizer = load_tokenizer(str(model_dir))
    encoded = tokenizer(
        eval_texts, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt"
    )
    inputs = (encoded["input_ids"], encoded["attention_mask"])
    gold = torch.tensor(labels)

    def accuracy(candidate: Any) -> float:
        with torch.inference_mode():
            output = candidate(*inputs)
        logits = output[0] if isinstance(output, (tuple, list)) else output["logits"]
        return float((logits.argmax(-1) == gold).float().mean())

    fp32_accuracy = accuracy(model)
    example = tuple(tensor[:2] for tensor in inputs)
    calibration = tuple(tensor[:CALIBRATION_TEXTS] for tensor in inputs)
    batch = torch.export.Dim("batch", max=4096)
    dynamic_shapes = ({0: batch}, {0: batch})
    try:
        exported = export(copy.deepcopy(model), example_inputs=example, dynamic_shapes=dynamic_shapes)
        tuned = autotune(
            exported,
            tune_config=TuningConfig(config_set=[DynamicQuantConfig()], tolerable_loss=tolerable_loss),
            eval_fn=accuracy,
            # Without a calibration pass the activation observers never run and INC 3.10 converts with default
            # scales ("must run observer before calling calculate_qparams"): 25% accuracy on 4 classes.
            run_fn=lambda candidate: candidate(*calibration),
        )
    except Exception as exc:  # INC and torch.export raise many types; the message is what matters
        raise StageError(f"neural-compressor autotune failed: {str(exc).splitlines()[0]}") from exc
    int8_accuracy = accuracy(tuned) if tuned is not None else 0.0
    # autotune returns its best trial even when that trial misses the target, so check it here.
    if tuned is None or int8_accuracy < fp32_accuracy * (1 - tolerable_loss):
        raise StageError(
            f"neural-compressor found no INT8 configuration within tolerable_loss={tolerable_loss}: "
            f"fp32 accuracy {fp32_accuracy:.4f}, best INT8 {int8_accuracy:.4f}"
        )
    target = Path(out_dir)
    pt2e_quant.save(tuned, example, str(target))
    record = {
        "tool": "neural_compressor.torch.quantization.autotune (DynamicQuantConfig, PT2E)",
        "fp32_accuracy": fp32_accuracy,
        "int8_accuracy": int8_accuracy,
        "tolerable_loss": tolerable_loss,
        "max_length": max_length,
        "samples": len(eval_texts),
        "load_with": "neural_compressor.torch.algorithms.pt2e_quant.load(folder)",
    }
    (target / "inc.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return IncResult(target, fp32_accuracy, int8_accuracy, tolerable_loss)
