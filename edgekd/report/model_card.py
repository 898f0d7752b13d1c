"""README.md of the shipped folder: a model card rendered from the report that measured it and its edgekd.json.

The benchmark stage writes it into the candidate's folder (`quantize/`) after report.json, so every figure is one
that report holds (with the report's sha256, to find the sign-off it came from), and the three ways to run the
folder name its real feeds, labels and max_length: `edgekd.runtime.Classifier`, Optimum's
`ORTModelForSequenceClassification` with `transformers.pipeline`, and plain `onnxruntime` + `tokenizers`.
README.md is not a model file (`artifact.model_files`): the report's size and file digests never count it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgekd.artifact import MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE, read_json_object
from edgekd.report.schema import Gate, Report, Variant

MODEL_CARD_FILE = "README.md"
REPORT_FILE = "report.json"
EXAMPLE_TEXT = "Type the text to classify here"


def model_card(folder: Path, report: Report, report_path: Path) -> str:
    """The model card of `folder`, from its edgekd.json and the report (`report_path`: its report.json)."""
    manifest = read_json_object(folder / MANIFEST_FILE) or {}
    return render_model_card(manifest, report, _sha256(report_path), folder.name)


def render_model_card(
    manifest: dict[str, Any], report: Report | None, report_sha256: str, folder: str
) -> str:
    """The card's Markdown. `report` None: a card without measurements (it says so)."""
    labels = [str(label) for label in manifest.get("labels") or []]
    sections = [
        _front_matter(manifest),
        _model_section(manifest, report, labels),
        _measured_section(report, report_sha256) if report else _NOT_MEASURED,
        _files_section(report),
        _usage_section(manifest, labels, folder),
    ]
    return "\n\n".join(section.rstrip() for section in sections) + "\n"


_NOT_MEASURED = "## Measured\n\nNot benchmarked yet: the benchmark stage writes the accuracy, latency and size figures here."


def _front_matter(manifest: dict[str, Any]) -> str:
    precision = str(manifest.get("precision") or "")
    tags = ["onnx", "edgekd", *(["int8"] if precision.startswith("int8") else [])]
    return "\n".join(
        [
            "---",
            f"pipeline_tag: {manifest.get('task') or 'text-classification'}",
            f"tags: [{', '.join(tags)}]",
            "---",
        ]
    )


def _model_section(manifest: dict[str, Any], report: Report | None, labels: list[str]) -> str:
    provenance = manifest.get("provenance") or {}
    recipe = provenance.get("recipe") or (report.recipe if report else None) or "edgekd"
    quantization = manifest.get("quantization") or {}
    settings = quantization.get("settings") or {}
    precision = str(manifest.get("precision") or "fp32")
    if quantization:
        precision += (
            f" ({quantization.get('tool')}, onnxruntime {quantization.get('onnxruntime')}; weights "
            f"{settings.get('weight_type')}, per_channel={settings.get('per_channel')}, fp32 fallback: "
            f"{', '.join(quantization.get('fp32_fallback_groups') or []) or 'none'})"
        )
    rows = [
        ("Task", str(manifest.get("task") or "text-classification")),
        ("Labels", f"{len(labels)}: {', '.join(labels)}"),
        ("Max length", f"{manifest.get('max_length')} tokens (longer texts are truncated at the end)"),
        ("Precision", precision),
        ("Inputs", ", ".join(f"`{name}`" for name in manifest.get("inputs") or [])),
    ]
    accuracy = manifest.get("accuracy")
    if isinstance(accuracy, dict):
        rows.append(
            (
                "Validation accuracy",
                f"{_num(accuracy.get('int8_onnx'))} (fp32 ONNX: {_num(accuracy.get('fp32_onnx'))}; "
                f"{accuracy.get('samples')} texts)",
            )
        )
    rows.append(("Built with", f"edgekd {provenance.get('edgekd_version')}, opset {provenance.get('opset')}"))
    label_rows = [(str(i), f"`{label}`") for i, label in enumerate(labels)]
    return "\n\n".join(
        [
            f"# {recipe}: text classifier (ONNX, {manifest.get('precision') or 'fp32'})",
            f"Distilled and quantized by edgekd from the recipe `{recipe}`.",
            _table(("", ""), rows),
            "### Labels",
            _table(("id", "label"), label_rows),
        ]
    )


def _measured_section(report: Report, report_sha256: str) -> str:
    candidate = report.variant(report.candidate or "") or (report.variants[-1] if report.variants else None)
    reference = report.variant(report.reference or "") or (report.variants[0] if report.variants else None)
    if candidate is None:
        return _NOT_MEASURED
    ref_name = reference.name if reference else "reference"
    rows = [
        ("Accuracy (test split)", _accuracy(candidate, reference, report)),
        ("Latency p50, batch 1", _latency(candidate)),
        ("Size", f"{_num(candidate.size_mb, 2)} MB ({candidate.size_bytes} bytes)"),
        (f"Speed-up vs {ref_name} (p50)", _times(candidate.speedup_p50)),
        (f"Compression vs {ref_name} (size)", _times(candidate.compression)),
    ]
    head = (
        f"## Measured\n\nFrom `{REPORT_FILE}` sha256 `{report_sha256}` (recipe `{report.recipe}`, "
        f"{report.created_utc}, edgekd {report.edgekd_version}): `{candidate.name}` against `{ref_name}`."
    )
    return "\n\n".join(
        [head, _table(("", ""), rows), f"Measured on: {_machine(report)}.", _gates(report.gates)]
    )


def _accuracy(candidate: Variant, reference: Variant | None, report: Report) -> str:
    text = f"{_num(candidate.accuracy)} on {report.benchmark.test_texts} texts"
    if reference is not None and reference is not candidate:
        diff = candidate.accuracy_diff_vs_reference_pts
        change = f", {diff.diff:+.2f} pts" if diff else ""
        text += f" ({reference.name}: {_num(reference.accuracy)}{change})"
    return text


def _latency(variant: Variant) -> str:
    latency = variant.latency_ms
    if latency is None:
        return "n/a"
    threads = variant.threads
    return (
        f"{_num(latency.p50, 3)} ms on {threads} thread{'s' if threads != 1 else ''} "
        f"(p90 {_num(latency.p90, 3)} ms, p99 {_num(latency.p99, 3)} ms; model call, tokenization apart)"
    )


def _machine(report: Report) -> str:
    env = report.environment
    cpu = env.cpu
    flags = [name for name, present in cpu.flags.items() if present]
    parts = [
        f"{cpu.model or 'unknown CPU'}, {cpu.logical_cores} logical cores ({cpu.usable_cores} usable)",
        f"flags: {', '.join(flags) or 'none listed'}",
        f"onnxruntime {env.versions.get('onnxruntime')}",
        str(env.platform or env.machine or "unknown platform"),
    ]
    return "; ".join(parts)


def _gates(gates: Sequence[Gate]) -> str:
    if not gates:
        return "Gates: none set, nothing was checked."
    verdicts = {gate.name: _verdict(gate) for gate in gates}
    overall = next((v for v in ("fail", "inconclusive") if v in verdicts.values()), "pass")
    named = [name for name, verdict in verdicts.items() if verdict == overall]
    heading = overall.upper() + (f" ({', '.join(named)})" if overall != "pass" else "")
    rows = [
        (
            f"`{gate.name}`",
            f"{gate.comparison or ''} {_gate_value(gate.limit, gate.unit)}".strip(),
            _gate_value(gate.value, gate.unit),
            verdicts[gate.name].upper(),
        )
        for gate in gates
    ]
    return f"### Gates: {heading}\n\n" + _table(("gate", "limit", "value", "verdict"), rows)


def _verdict(gate: Gate) -> str:
    """ "pass", "fail" or "inconclusive" (reports from before gates had a verdict: from `passed`)."""
    verdict = getattr(gate, "verdict", None)
    return str(verdict) if verdict else ("pass" if gate.passed else "fail")


def _files_section(report: Report | None) -> str:
    candidate = report.variant(report.candidate or "") if report else None
    names = [f.path for f in candidate.files or []] if candidate else []
    listed = ", ".join(f"`{name}`" for name in [*names, MODEL_CARD_FILE]) if names else ""
    return "\n\n".join(
        [
            "## Files",
            (f"{listed}. " if listed else "")
            + f"`{MANIFEST_FILE}` holds the labels, max_length, graph inputs, quantization settings and "
            "provenance; the sha256 of every model file is in the report.",
        ]
    )


def _usage_section(manifest: dict[str, Any], labels: list[str], folder: str) -> str:
    max_length = manifest.get("max_length")
    inputs = [str(name) for name in manifest.get("inputs") or ["input_ids", "attention_mask"]]
    fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    feeds = "\n".join(
        f'    "{name}": np.array([encoding.{fields.get(name, "ids")}], dtype=np.int64),' for name in inputs
    )
    return f'''## Use

Paths are relative to the folder above this one (`{folder}`).

### edgekd (numpy + onnxruntime + tokenizers, no torch)

```python
from edgekd.runtime import Classifier

classifier = Classifier.load("{folder}", threads=1)
print(classifier.predict(["{EXAMPLE_TEXT}"])[0])
```

or `edgekd predict {folder} "{EXAMPLE_TEXT}"`.

### Optimum and transformers

```python
from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoTokenizer, pipeline

model = ORTModelForSequenceClassification.from_pretrained("{folder}")
tokenizer = AutoTokenizer.from_pretrained("{folder}")
classify = pipeline("text-classification", model=model, tokenizer=tokenizer)
print(classify(["{EXAMPLE_TEXT}"], truncation=True, max_length={max_length}))
```

### onnxruntime and tokenizers

```python
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

labels = {labels!r}
tokenizer = Tokenizer.from_file("{folder}/{TOKENIZER_FILE}")
tokenizer.enable_truncation(max_length={max_length})
session = ort.InferenceSession("{folder}/{MODEL_FILE}", providers=["CPUExecutionProvider"])

encoding = tokenizer.encode("{EXAMPLE_TEXT}")
feeds = {{
{feeds}
}}
logits = session.run(None, feeds)[0][0]
scores = np.exp(logits - logits.max())
scores /= scores.sum()
print(labels[int(scores.argmax())], float(scores.max()))
```
'''


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}x"


def _gate_value(value: float, unit: str | None) -> str:
    unit = unit or ""
    return f"{value:.4g}{'' if unit in ('', 'x') else ' '}{unit}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
