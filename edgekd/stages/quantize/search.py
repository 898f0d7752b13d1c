"""Accuracy-aware INT8: measure an ONNX model on real texts and fall back to fp32 where INT8 hurts most.

The search, given a validation accuracy budget (points below the fp32 ONNX):

1. quantize everything that is allowed and measure; within budget -> done;
2. sensitivity: for each node group (an encoder layer's weight MatMuls, or the pooler, or the classifier;
   single MatMuls with `fallback: node`) quantize everything *but* that group and measure accuracy and logit
   MSE against the fp32 model. The groups whose exclusion recovers most (accuracy, then lower MSE) are the
   most sensitive: per-tensor INT8 breaks on weights with outliers, and that shows up here;
3. greedy fallback: keep the most sensitive group in fp32, then the two most sensitive, ... until the budget
   holds. A model with every group in fp32 is not INT8, so that is never tried: the search fails instead with
   a StageError that lists every trial.

Logit MSE breaks ties that accuracy on a small validation split cannot (many groups change no prediction).
Everything here is torch-free: onnx, onnxruntime, numpy and the runtime's tokenizer.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.artifact import FEEDABLE_INPUTS, feeds_from_encodings
from edgekd.errors import StageError
from edgekd.runtime import check_graph_inputs, create_session, load_shipped_tokenizer

EVAL_BATCH_SIZE = 32
# Every input a text classifier's graph may declare, fed as int64 (the type check_graph_inputs accepts).
INT64_FEEDS = {name: np.int64 for name in FEEDABLE_INPUTS}
# Node types with a weight the quantizer turns into INT8, and the input position of that weight (Gather and
# EmbedLayerNormalization hold embedding tables).
WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Attention": 1, "Gather": 0, "EmbedLayerNormalization": 2}
LAYER_PATTERN = re.compile(r"layers?[._/](\d+)")


@dataclass(frozen=True)
class Evaluation:
    """Accuracy and raw logits of one model on the evaluation texts."""

    accuracy: float
    logits: np.ndarray


@dataclass
class Trial:
    """One quantized candidate and how it measured."""

    purpose: str
    fp32_groups: list[str]
    accuracy: float
    drop_pts: float
    logit_mse: float
    within_budget: bool
    path: Path

    def record(self) -> dict[str, Any]:
        """The JSON form (quantize.json, edgekd.json, error messages)."""
        return {
            "purpose": self.purpose,
            "fp32_groups": self.fp32_groups,
            "accuracy": round(self.accuracy, 6),
            "drop_pts": round(self.drop_pts, 4),
            "logit_mse": float(f"{self.logit_mse:.6g}"),
            "within_budget": self.within_budget,
        }


@dataclass
class SearchResult:
    """The shipped candidate, every trial, and the sensitivity ranking (empty when no fallback was needed)."""

    chosen: Trial
    trials: list[Trial]
    sensitivity: list[str] = field(default_factory=list)


QuantizeFn = Callable[[list[str], Path], None]
"""Quantize with these node names kept in fp32 (on top of the recipe's) into this .onnx path."""
EvaluateFn = Callable[[Path], Evaluation]


# ----------------------------------------------------------------------------------------------------------
# Measuring


class OnnxEvaluator:
    """Accuracy of ONNX models on fixed texts, tokenized once with the folder's runtime tokenizer.

    Args:
        support_dir: A folder with tokenizer.json (and its configs), e.g. the export folder.
        texts: The evaluation texts.
        labels: Their gold class ids.
        max_length: Truncation length in tokens.
        threads: Intra-op threads for the sessions.
    """

    def __init__(
        self, support_dir: Path, texts: list[str], labels: list[int], max_length: int, threads: int = 1
    ) -> None:
        if not texts:
            raise StageError("the validation split is empty: there is nothing to measure accuracy on")
        tokenizer = load_shipped_tokenizer(support_dir, max_length)
        self.labels = np.asarray(labels)
        self.threads = threads
        self.batches: list[dict[str, np.ndarray]] = []
        for start in range(0, len(texts), EVAL_BATCH_SIZE):
            encodings = tokenizer.encode_batch(texts[start : start + EVAL_BATCH_SIZE])
            self.batches.append(feeds_from_encodings(encodings, INT64_FEEDS))

    def __call__(self, onnx_path: Path) -> Evaluation:
        session = create_session(onnx_path, self.threads)
        names = check_graph_inputs(session, onnx_path.parent)
        output = session.get_outputs()[0].name
        logits = np.concatenate(
            [session.run([output], {name: batch[name] for name in names})[0] for batch in self.batches]
        ).astype(np.float32)
        return Evaluation(accuracy=float(np.mean(logits.argmax(-1) == self.labels)), logits=logits)


def batch1_latency_ms(
    onnx_path: Path, support_dir: Path, texts: list[str], max_length: int, threads: int = 1
) -> float:
    """Median batch-1 latency in ms over `texts` (run twice, after a short warm-up), single-thread by default."""
    tokenizer = load_shipped_tokenizer(support_dir, max_length)
    session = create_session(onnx_path, threads=threads)
    names = check_graph_inputs(session, onnx_path.parent)
    output = session.get_outputs()[0].name
    feeds = [
        feeds_from_encodings([encoding], {name: np.int64 for name in names})
        for encoding in tokenizer.encode_batch(texts)
    ]
    for feed in feeds[:3]:
        session.run([output], feed)
    times = []
    for feed in feeds * 2:
        start = time.perf_counter()
        session.run([output], feed)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


# ----------------------------------------------------------------------------------------------------------
# Groups


def weight_node_groups(onnx_path: Path, op_types: list[str], granularity: str) -> dict[str, list[str]]:
    """Named weight-bearing nodes the quantizer may touch, grouped by encoder layer (or one group per node).

    Embedding lookups (Gather on a table) are candidates too, each a group of its own.

    A Gemm is listed with its `<name>_MatMul` twin: the quantizer renames Gemms before reading its exclusion
    list. Nodes outside any numbered layer (pooler, classifier, fused ops without a layer in their name) form
    groups of their own.

    Args:
        onnx_path: The fp32 graph that will be quantized.
        op_types: The recipe's op types (only these are grouped).
        granularity: "layer" or "node".
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {tensor.name for tensor in graph.initializer}
    groups: dict[str, list[str]] = {}
    for node in graph.node:
        # A Gemm is quantized through the MatMul it is rewritten into.
        allowed = node.op_type in op_types or (node.op_type == "Gemm" and "MatMul" in op_types)
        position = WEIGHT_INPUT.get(node.op_type)
        if position is None or not allowed or not node.name:
            continue
        if len(node.input) <= position or node.input[position] not in weights:
            continue
        match = LAYER_PATTERN.search(node.name)
        key = f"layer.{match.group(1)}" if granularity == "layer" and match else node.name
        names = [node.name, f"{node.name}_MatMul"] if node.op_type == "Gemm" else [node.name]
        groups.setdefault(key, []).extend(names)
    return groups


# ----------------------------------------------------------------------------------------------------------
# Search


def accuracy_aware_search(
    quantize: QuantizeFn,
    evaluate: EvaluateFn,
    reference: Evaluation,
    groups: dict[str, list[str]],
    budget_pts: float | None,
    work_dir: Path,
    log: Callable[[str], None] = print,
) -> SearchResult:
    """Quantize, and while the accuracy drop exceeds `budget_pts`, keep sensitive groups in fp32.

    Args:
        quantize: Writes a quantized model with the given node names kept in fp32.
        evaluate: Measures a model file.
        reference: The fp32 model's evaluation (the accuracy the budget is measured against).
        groups: Candidate fp32 groups (`weight_node_groups`).
        budget_pts: Largest allowed drop in accuracy points; None accepts the first candidate.
        work_dir: Where candidate files go.
        log: Progress lines.

    Raises:
        StageError: no candidate meets the budget; the message lists every trial.
    """
    trials: list[Trial] = []

    def trial(purpose: str, fp32_groups: list[str]) -> Trial:
        path = work_dir / f"trial_{len(trials)}" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        quantize([name for group in fp32_groups for name in groups[group]], path)
        result = evaluate(path)
        drop = (reference.accuracy - result.accuracy) * 100
        measured = Trial(
            purpose=purpose,
            fp32_groups=list(fp32_groups),
            accuracy=result.accuracy,
            drop_pts=drop,
            logit_mse=float(np.mean((result.logits.astype(np.float64) - reference.logits) ** 2)),
            within_budget=budget_pts is None or drop <= budget_pts + 1e-9,
            path=path,
        )
        trials.append(measured)
        log(
            f"quantize: {purpose} fp32={fp32_groups or '-'}: accuracy {result.accuracy:.4f} (drop {drop:.2f} pts)"
        )
        return measured

    first = trial("all-int8", [])
    if first.within_budget:
        return SearchResult(chosen=first, trials=trials)
    ranked = rank_sensitivity({name: trial("sensitivity", [name]) for name in groups})
    fallback: list[str] = []
    for name in ranked[:-1]:  # keeping every group in fp32 would leave no INT8 at all
        fallback.append(name)
        done = next((t for t in trials if t.fp32_groups == fallback), None)
        candidate = done or trial("fallback", fallback)
        if candidate.within_budget:
            return SearchResult(chosen=candidate, trials=trials, sensitivity=ranked)
    raise StageError(
        f"no INT8 model within quantize.max_accuracy_drop_pts = {budget_pts} (fp32 ONNX validation accuracy "
        f"{reference.accuracy:.4f}); tried:\n" + "\n".join(f"  - {describe(t)}" for t in trials),
        hint="raise the budget, try weight_type/reduce_range/per_channel settings, or fallback: node",
    )


def rank_sensitivity(single: dict[str, Trial]) -> list[str]:
    """Group names, most sensitive first: highest accuracy when kept in fp32, then lowest logit MSE."""
    return sorted(single, key=lambda name: (-single[name].accuracy, single[name].logit_mse, name))


def describe(trial: Trial) -> str:
    """One line per trial for error messages."""
    kept = ", ".join(trial.fp32_groups) or "none"
    return (
        f"{trial.purpose}: fp32 groups [{kept}] -> accuracy {trial.accuracy:.4f}, drop {trial.drop_pts:.2f} pts, "
        f"logit MSE {trial.logit_mse:.3g}"
    )
