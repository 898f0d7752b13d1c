"""`student.budget`: distil the best student the speed gate leaves room for, on the machine that runs the recipe.

Why: the depth (and width) a batch-1 INT8 student may have under `gates.min_speedup_p50` depends on the CPU: a
384-wide INT8 layer costs about 2-3 ms on a 2-core AVX2 CPU and about 1 ms with AVX-512 VNNI, while the fp32
teacher's latency scales differently (benchmarks/results/student_depth.json). A depth fixed by hand either fails
the gate on a slow CPU or wastes accuracy on a fast one. Latency does not depend on the weights, so before any
training each candidate shape is cut from the student's source model (layers copied, the first units kept where
it is pruned), exported and quantized as the export and quantize stages would, and timed at batch 1 against the
PyTorch fp32 teacher on the same validation texts, both with the benchmark's thread count. The first candidate
(the recipe lists them best first) whose predicted speed-up clears the gate times `margin` is distilled; the
measurements and the choice go into distill/stage.json, and the report sets the prediction beside the speed-up
the benchmark measured.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgekd.recipe.schema import BudgetSpec, Recipe, StudentShape


def choose_candidate(
    candidate_ms: Sequence[float], teacher_ms: float, needed_speedup: float
) -> tuple[int, bool]:
    """The index of the first candidate whose predicted speed-up (teacher_ms / candidate_ms) reaches
    `needed_speedup`, and True; when none does, the fastest candidate and False."""
    for index, ms in enumerate(candidate_ms):
        if teacher_ms / ms >= needed_speedup:
            return index, True
    return min(range(len(candidate_ms)), key=lambda i: candidate_ms[i]), False


def choose_student_shape(
    recipe: Recipe,
    teacher_dir: Path,
    labels: list[str],
    texts: list[str],
    log: Callable[[str], None] = print,
) -> tuple[StudentShape, dict[str, Any]]:
    """Time the teacher and every `student.budget` candidate on `texts` and pick one (see the module doc).

    Returns:
        The chosen shape and the record for distill/stage.json.
    """
    budget: BudgetSpec = recipe.student.budget  # type: ignore[assignment]  # callers check it is set
    gate = float(recipe.gates.min_speedup_p50 or 0.0)
    texts = texts[: budget.texts]
    threads = recipe.benchmark.threads
    started = time.perf_counter()
    teacher_ms = teacher_latency_ms(teacher_dir, texts, recipe.data.max_length, threads)
    log(
        f"student budget: the teacher takes {teacher_ms:.1f} ms per text (PyTorch fp32, batch 1, {threads} thread(s))"
    )
    candidate_ms = []
    with tempfile.TemporaryDirectory(prefix="edgekd-budget-") as tmp:
        for index, shape in enumerate(budget.candidates):
            ms = candidate_latency_ms(recipe, teacher_dir, labels, shape, texts, Path(tmp) / str(index))
            candidate_ms.append(ms)
            log(
                f"student budget: {describe_shape(shape)}: {ms:.2f} ms INT8, predicted speed-up {teacher_ms / ms:.1f}x"
            )
    needed = gate * budget.margin
    index, fits = choose_candidate(candidate_ms, teacher_ms, needed)
    chosen = budget.candidates[index]
    if fits:
        log(
            f"student budget: distilling {describe_shape(chosen)} (needs {needed:.1f}x: gate {gate:g}x x margin {budget.margin:g})"
        )
    else:
        log(
            f"warning: no student.budget candidate reaches {needed:.1f}x on this machine; distilling the fastest, "
            f"{describe_shape(chosen)} ({teacher_ms / candidate_ms[index]:.1f}x): the speed gate may fail"
        )
    record = {
        "teacher_p50_ms": round(teacher_ms, 3),
        "threads": threads,
        "texts": len(texts),
        "needed_speedup": round(needed, 2),
        "candidates": [
            {
                **shape.model_dump(mode="json"),
                "int8_p50_ms": round(ms, 3),
                "predicted_speedup_p50": round(teacher_ms / ms, 2),
            }
            for shape, ms in zip(budget.candidates, candidate_ms, strict=True)
        ],
        "chosen": index,
        "fits": fits,
        "predicted_speedup_p50": round(teacher_ms / candidate_ms[index], 2),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return chosen, record


def describe_shape(shape: StudentShape) -> str:
    text = f"layers {shape.layers}"
    if shape.prune is not None:
        text += f", FFN kept {shape.prune.ffn_keep:g}, heads kept {shape.prune.heads_keep:g}"
    return text


# ----------------------------------------------------------------------------------------------------------
# Measuring


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Torch's intra-op threads set for a measurement, then put back for training."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def teacher_latency_ms(teacher_dir: Path, texts: list[str], max_length: int, threads: int) -> float:
    """Median batch-1 latency of the PyTorch fp32 teacher (the benchmark's reference runtime) over `texts`."""
    import torch

    from edgekd.models import load_classifier, load_tokenizer

    model = load_classifier(str(teacher_dir)).eval()
    tokenizer = load_tokenizer(str(teacher_dir))
    encoded = [tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt") for text in texts]
    times = []
    with torch_threads(threads), torch.inference_mode():
        for batch in encoded[:3]:  # warm-up
            model(**batch)
        for batch in encoded:
            start = time.perf_counter()
            model(**batch)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def candidate_latency_ms(
    recipe: Recipe, teacher_dir: Path, labels: list[str], shape: StudentShape, texts: list[str], work: Path
) -> float:
    """Median batch-1 INT8 latency of `shape` cut from the student's source model, exported and quantized with
    the recipe's export and quantize settings."""
    from edgekd.artifact import MODEL_FILE, onnx_file_bytes
    from edgekd.stages.export import export_onnx
    from edgekd.stages.quantize.ort import make_quantizer, prepare_graph, quantization_settings
    from edgekd.stages.quantize.search import batch1_latency_ms

    pytorch_dir, onnx_dir = work / "pytorch", work / "onnx"
    save_shape(recipe, teacher_dir, labels, shape, pytorch_dir)
    export_onnx(pytorch_dir, onnx_dir, recipe.export.opset)
    fp32 = onnx_dir / MODEL_FILE
    spec = recipe.quantize
    settings = quantization_settings(spec, [])
    max_length = recipe.data.max_length
    quantize = make_quantizer(spec, settings, onnx_dir, texts, max_length, onnx_file_bytes(fp32))
    prepared = prepare_graph(fp32, onnx_dir, spec.optimize, quantize, texts[:24], max_length, work)
    int8 = onnx_dir / "model-int8.onnx"
    quantize(prepared.path, [], int8)
    return batch1_latency_ms(int8, onnx_dir, texts, max_length, threads=recipe.benchmark.threads)


def save_shape(
    recipe: Recipe, teacher_dir: Path, labels: list[str], shape: StudentShape, out_dir: Path
) -> None:
    """The student's source model with only `shape.layers`, pruned to `shape.prune`'s widths (which units are
    kept does not matter for latency: the first ones), saved with its tokenizer."""
    from edgekd.models import keep_layers, load_classifier, load_tokenizer
    from edgekd.stages.distill.structured_prune import (
        PrunePlan,
        apply_plan,
        ffn_width,
        head_count,
        kept_count,
        prunable_layers,
    )

    spec = recipe.student
    source = str(teacher_dir) if spec.model == "teacher" else str(spec.model)
    model = load_classifier(
        source, labels=labels, allow_pickle=spec.allow_pickle, trust_remote_code=spec.trust_remote_code
    )
    keep_layers(model, shape.layers)
    if shape.prune is not None:
        layers = prunable_layers(model)
        kept = list(range(kept_count(ffn_width(layers[0]), shape.prune.ffn_keep)))
        heads = head_count(layers[0])
        removed = list(range(heads - kept_count(heads, shape.prune.heads_keep)))
        apply_plan(
            model,
            PrunePlan(
                ffn_kept=[kept] * len(layers), heads_removed=dict.fromkeys(range(len(layers)), removed)
            ),
        )
    model.save_pretrained(out_dir)
    load_tokenizer(source).save_pretrained(out_dir)
