"""Fast, faithful teacher labelling: the teacher's logits for every teacher-logit pass of the distill stage.

Backends (`distill.labelling`):

* `torch-fp32`: the PyTorch teacher in fp32, length-sorted batches with dynamic padding. The reference every
  other backend is measured against, and the only one whose logit cache keys are those of earlier edgekd runs.
* `torch-bf16`: the same under bf16 autocast; only where the CPU multiplies bf16 natively (avx512_bf16 or
  amx_bf16): elsewhere autocast emulates bf16 and is slower than fp32, so it is refused.
* `onnx-fp32`: the teacher exported once with the export stage's code into `<run>/cache/`, run with ONNX
  Runtime on every usable core, length-sorted with dynamic padding.
* `onnx-int8`: dynamic INT8 of that export, with the quantize stage's helpers. Only when asked.
* `auto` (default): for a pass large enough to pay for the export and the check (`AUTO_MIN_ROWS`), `torch-bf16`
  where the CPU multiplies bf16 natively and `onnx-fp32` elsewhere (the faster of the faithful backends on each
  kind of CPU: benchmarks/results/teacher_labelling*.json); smaller passes `torch-fp32`. A refused bf16 check
  tries `onnx-fp32`; any other failure falls back to `torch-fp32` with a warning.

Faithfulness is measured, not assumed: before a fast backend labels anything, it and the fp32 PyTorch teacher
label the first `CHECK_ROWS` validation texts; the argmax agreement and max |logit difference| land in
`distill/stage.json` (`labelling`), and a backend that agrees on less than `MIN_AGREEMENT` is refused.

Cache keys: the logit cache key of `torch-fp32` is the one edgekd always used, so logits cached by earlier runs
are found; every other backend adds its tag (its logits differ slightly). `auto` reads a `torch-fp32` cache
file first (the reference itself), then its own fast backend's, then the other kind of CPU's (a run folder
labelled on an AVX2 machine and resumed on a bf16 one keeps its logits: each passed the same check). The
distill stage key leaves `labelling` out while it is `auto`, so an existing run keeps its trained student; only
a pass that has to label texts again may then use the fast backend.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.bench.envinfo import bf16_native
from edgekd.errors import EdgekdError, InputError, StageError
from edgekd.recipe.schema import Recipe
from edgekd.stages.export import ParityReport, compare_logits

REFERENCE = "torch-fp32"
BACKENDS = ("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8")
AUTO = "auto"
# What `auto` may label large passes with, in the order it tries them (auto_fast picks the first for the CPU).
AUTO_FAST = ("torch-bf16", "onnx-fp32")
# Below this many texts, exporting MPNet-base (about a minute on 2 cores) and checking it on validation cost
# more than ONNX Runtime saves (~0.07 s a row at ~10 vs ~30 rows/s), so `auto` labels small passes in PyTorch.
AUTO_MIN_ROWS = 2000
MIN_AGREEMENT = 0.995
CHECK_ROWS = 512
BATCH_SIZE = 64
ONNX_FOLDER = "teacher-onnx"

LogitFn = Callable[[list[str], str], np.ndarray]
"""(texts, description for the progress line) -> float32 logits, one row per text, in the texts' order."""


@dataclass(frozen=True)
class BackendSetup:
    """What every backend factory needs: the teacher, the truncation length and where exports are cached."""

    teacher_dir: Path
    max_length: int
    cache_dir: Path
    teacher_key: str
    opset: int = 17


# ----------------------------------------------------------------------------------------------------------
# Batching


def length_sorted_batches(texts: list[str], batch_size: int = BATCH_SIZE) -> Iterator[list[int]]:
    """Indices of `texts` in batches of similar length, so dynamic padding pads little."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _tracked_batches(texts: list[str], desc: str, whose: str = "teacher") -> Iterator[list[int]]:
    from edgekd.progress import track

    batches = list(length_sorted_batches(texts))
    return track(iter(batches), len(batches), f"{whose} logits ({desc or 'texts'})", "batches")


# ----------------------------------------------------------------------------------------------------------
# PyTorch


def torch_teacher_logits(
    teacher_dir: Path,
    texts: list[str],
    max_length: int,
    desc: str = "",
    bf16: bool = False,
    whose: str = "teacher",
) -> np.ndarray:
    """Batched PyTorch inference of a classifier folder (the teacher's, or `whose` model's for the progress
    line), fp32 or bf16 autocast, length-sorted with dynamic padding."""
    import torch

    from edgekd.models import load_classifier, load_tokenizer

    model = load_classifier(str(teacher_dir)).eval()
    tokenizer = load_tokenizer(str(teacher_dir))
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), precision:
        for idx in _tracked_batches(texts, desc, whose):
            enc = tokenizer(
                [texts[i] for i in idx],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            out[idx] = model(**enc).logits.float().numpy()
    return out


def auto_candidates(flags: set[str] | None = None) -> list[str]:
    """The fast backends `auto` tries on this CPU, in `AUTO_FAST` order: bf16 only where it is native."""
    return [backend for backend in AUTO_FAST if backend != "torch-bf16" or bf16_native(flags)]


def auto_fast(flags: set[str] | None = None) -> str:
    """`auto`'s backend for large passes: bf16 autocast where the CPU has it natively, else ONNX Runtime fp32."""
    return auto_candidates(flags)[0]


def torch_fp32_backend(setup: BackendSetup) -> LogitFn:
    return lambda texts, desc: torch_teacher_logits(setup.teacher_dir, texts, setup.max_length, desc)


def torch_bf16_backend(setup: BackendSetup) -> LogitFn:
    if not bf16_native():
        raise InputError(
            "distill.labelling: torch-bf16 needs a CPU with native bf16 (avx512_bf16 or amx_bf16); "
            "this one would emulate it, slower than fp32",
            hint="set distill.labelling: auto (or onnx-fp32) on this machine",
        )
    return lambda texts, desc: torch_teacher_logits(
        setup.teacher_dir, texts, setup.max_length, desc, bf16=True
    )


# ----------------------------------------------------------------------------------------------------------
# ONNX Runtime


def exported_teacher(setup: BackendSetup) -> Path:
    """The teacher's ONNX export under the cache folder, made once (written aside, then renamed into place)."""
    from edgekd.artifact import MODEL_FILE
    from edgekd.stages.export import export_onnx

    folder = setup.cache_dir / f"{ONNX_FOLDER}-{setup.teacher_key}-opset{setup.opset}"
    if (folder / MODEL_FILE).is_file():
        return folder
    setup.cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=setup.cache_dir))
    try:
        export_onnx(setup.teacher_dir, work, setup.opset)
        shutil.rmtree(folder, ignore_errors=True)  # a folder a killed run left without model.onnx
        work.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def int8_settings() -> dict[str, Any]:
    """The quantize stage's dynamic INT8 settings for this CPU, per-channel as the shipped recipes use."""
    from edgekd.recipe.schema import QuantizeSpec
    from edgekd.stages.quantize.ort import quantization_settings

    return quantization_settings(QuantizeSpec(per_channel=True), [])


def quantized_teacher(setup: BackendSetup) -> Path:
    """Dynamic INT8 of the teacher's export, made once next to it."""
    from edgekd.artifact import MODEL_FILE
    from edgekd.stages.quantize.ort import quantize_model

    fp32_dir = exported_teacher(setup)
    settings = int8_settings()
    int8_path = fp32_dir / f"model-int8-{settings['weight_type']}.onnx"
    if not int8_path.is_file():
        partial = int8_path.with_suffix(".partial.onnx")
        quantize_model(fp32_dir / MODEL_FILE, partial, settings, [])
        partial.rename(int8_path)
    return int8_path


def onnx_teacher_logits(
    session: Any, tokenizer: Any, texts: list[str], max_length: int, desc: str = ""
) -> np.ndarray:
    """Batched ONNX Runtime inference, length-sorted with dynamic padding."""
    wanted = [graph_input.name for graph_input in session.get_inputs()]
    out: np.ndarray | None = None
    for idx in _tracked_batches(texts, desc):
        enc = tokenizer(
            [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="np"
        )
        missing = [name for name in wanted if name not in enc]
        if missing:
            raise StageError(
                f"the teacher's ONNX graph needs {missing}, which its tokenizer does not produce"
            )
        logits = session.run(["logits"], {name: np.asarray(enc[name], dtype=np.int64) for name in wanted})[0]
        if out is None:
            out = np.zeros((len(texts), logits.shape[-1]), dtype=np.float32)
        out[idx] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def _onnx_backend(onnx_path: Path, setup: BackendSetup) -> LogitFn:
    from edgekd.bench.envinfo import usable_cores
    from edgekd.models import load_tokenizer
    from edgekd.runtime import create_session

    session = create_session(onnx_path, threads=usable_cores())
    tokenizer = load_tokenizer(str(setup.teacher_dir))
    return lambda texts, desc: onnx_teacher_logits(session, tokenizer, texts, setup.max_length, desc)


def onnx_fp32_backend(setup: BackendSetup) -> LogitFn:
    from edgekd.artifact import MODEL_FILE

    return _onnx_backend(exported_teacher(setup) / MODEL_FILE, setup)


def onnx_int8_backend(setup: BackendSetup) -> LogitFn:
    return _onnx_backend(quantized_teacher(setup), setup)


FACTORIES: dict[str, Callable[[BackendSetup], LogitFn]] = {
    "torch-fp32": torch_fp32_backend,
    "torch-bf16": torch_bf16_backend,
    "onnx-fp32": onnx_fp32_backend,
    "onnx-int8": onnx_int8_backend,
}


def cache_tag(backend: str) -> str | None:
    """What a backend adds to the logit cache key: nothing for the reference (earlier runs' keys)."""
    if backend == REFERENCE:
        return None
    if backend == "onnx-int8":
        settings = int8_settings()
        return f"onnx-int8:{settings['weight_type']}:per_channel={settings['per_channel']}"
    return backend


# ----------------------------------------------------------------------------------------------------------
# Faithfulness


@dataclass(frozen=True)
class Faithfulness:
    """A fast backend against the fp32 PyTorch teacher on the same validation texts."""

    backend: str
    rows: int
    argmax_agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    reference_seconds: float
    backend_seconds: float

    @property
    def accepted(self) -> bool:
        return self.argmax_agreement >= MIN_AGREEMENT


def measure_faithfulness(backend: str, fast: LogitFn, reference: LogitFn, texts: list[str]) -> Faithfulness:
    """Label `texts` with both and compare the logits."""
    t0 = time.perf_counter()
    expected = reference(texts, "faithfulness check, torch-fp32")
    t1 = time.perf_counter()
    got = fast(texts, f"faithfulness check, {backend}")
    t2 = time.perf_counter()
    report: ParityReport = compare_logits(expected, got)
    return Faithfulness(
        backend=backend,
        rows=report.samples,
        argmax_agreement=report.argmax_agreement,
        max_abs_diff=report.max_abs_diff,
        mean_abs_diff=report.mean_abs_diff,
        reference_seconds=round(t1 - t0, 2),
        backend_seconds=round(t2 - t1, 2),
    )


def refusal(check: Faithfulness) -> StageError:
    """The error for a backend whose labels are not the teacher's."""
    return StageError(
        f"distill.labelling: {check.backend} agrees with the fp32 PyTorch teacher on "
        f"{check.argmax_agreement:.2%} of {check.rows} validation texts (at least {MIN_AGREEMENT:.1%} "
        f"required; max |logit difference| {check.max_abs_diff:.3g})",
        hint="set distill.labelling: torch-fp32 (or auto, which falls back to it)",
    )


# ----------------------------------------------------------------------------------------------------------
# The labeller the distill stage uses


@dataclass
class TeacherLabeller:
    """Labels every teacher-logit pass of one distill run with one backend, chosen and checked once.

    Args:
        setup: The teacher, max_length and cache folder.
        requested: `distill.labelling`.
        check_texts: Validation texts for the faithfulness check (capped at `CHECK_ROWS`).
        log: The stage's log.
    """

    setup: BackendSetup
    requested: str = AUTO
    check_texts: list[str] = field(default_factory=list)
    log: Callable[[str], None] = print
    _backend: str | None = field(default=None, init=False)
    _fn: LogitFn | None = field(default=None, init=False)
    _check: Faithfulness | None = field(default=None, init=False)
    _fallback: str | None = field(default=None, init=False)
    _passes: list[dict[str, Any]] = field(default_factory=list, init=False)

    def acceptable_caches(self) -> list[str]:
        """Backends whose cached logits this labeller may reuse, best first."""
        if self.requested != AUTO:
            return [self.requested]
        chosen = self._backend or auto_fast()
        if chosen == REFERENCE:
            return [REFERENCE]
        return [REFERENCE, chosen, *(backend for backend in AUTO_FAST if backend != chosen)]

    def backend_for(self, rows: int) -> str:
        """The backend that labels a pass of `rows` texts (resolving and checking it on first use)."""
        if self._backend is None and self.requested == AUTO and rows < AUTO_MIN_ROWS:
            return REFERENCE  # too few rows to pay for the export; decided again for a larger pass
        self._resolve(rows)
        return self._backend or REFERENCE

    def label(self, texts: list[str], split: str) -> tuple[np.ndarray, str]:
        """The teacher's logits for `texts` and the backend that made them."""
        backend = self.backend_for(len(texts))
        fn = (
            self._fn
            if backend == self._backend and self._fn is not None
            else FACTORIES[REFERENCE](self.setup)
        )
        t0 = time.perf_counter()
        logits = fn(texts, split)
        seconds = time.perf_counter() - t0
        self._passes.append(
            {
                "split": split,
                "rows": len(texts),
                "backend": backend,
                "seconds": round(seconds, 2),
                "rows_per_s": round(len(texts) / seconds, 2) if seconds > 0 else None,
            }
        )
        return logits, backend

    def note_cached(self, split: str, rows: int, backend: str) -> None:
        self._passes.append({"split": split, "rows": rows, "backend": backend, "cached": True})

    def record(self) -> dict[str, Any]:
        """What `distill/stage.json` records under `labelling`."""
        return {
            "requested": self.requested,
            "backend": self._backend,
            "min_agreement": MIN_AGREEMENT,
            "check_rows_cap": CHECK_ROWS,
            "auto_min_rows": AUTO_MIN_ROWS if self.requested == AUTO else None,
            "faithfulness": asdict(self._check) if self._check is not None else None,
            "fallback": self._fallback,
            "passes": list(self._passes),
        }

    def _resolve(self, rows: int) -> None:
        if self._backend is not None:
            return
        if self.requested == REFERENCE:
            self._backend, self._fn = REFERENCE, FACTORIES[REFERENCE](self.setup)
            return
        # auto: each fast backend this CPU runs (a refused bf16 check still leaves ONNX Runtime fp32), then the
        # reference.
        wanted = auto_candidates() if self.requested == AUTO else [self.requested]
        for backend in wanted:
            try:
                self._fn = self._checked(backend)
                self._backend = backend
                return
            except EdgekdError as exc:
                if self.requested != AUTO:
                    raise
                self._fallback = exc.message
                self.log(f"warning: teacher labelling does not use {backend}: {exc.message}")
        self.log("warning: teacher labelling falls back to torch-fp32")
        self._backend, self._fn = REFERENCE, FACTORIES[REFERENCE](self.setup)

    def _checked(self, backend: str) -> LogitFn:
        fast = FACTORIES[backend](self.setup)
        texts = self.check_texts[:CHECK_ROWS]
        if not texts:
            raise StageError(
                f"distill.labelling: no validation texts to check {backend} against the fp32 teacher",
                hint="set distill.labelling: torch-fp32",
            )
        self._check = measure_faithfulness(backend, fast, FACTORIES[REFERENCE](self.setup), texts)
        check = self._check
        self.log(
            f"teacher labelling: {backend} agrees with torch-fp32 on {check.argmax_agreement:.2%} of "
            f"{check.rows} validation texts (max |logit diff| {check.max_abs_diff:.2e}; "
            f"{check.rows / max(check.backend_seconds, 1e-9):.1f} vs "
            f"{check.rows / max(check.reference_seconds, 1e-9):.1f} rows/s)"
        )
        if not check.accepted:
            raise refusal(check)
        return fast


def teacher_identity(teacher_dir: Path) -> Any:
    """The teacher's identity in cache keys: its stage key, or its files' fingerprint outside a run."""
    from edgekd.stages.runner import fingerprint_path, read_stage_json

    teacher_record = read_stage_json(teacher_dir.parent) or {}
    return teacher_record.get("key") or fingerprint_path(str(teacher_dir))


def logits_cache_key(teacher: Any, texts: list[str], max_length: int, backend: str) -> str:
    """The logit cache key: edgekd's original key for torch-fp32, with the backend's tag for the others."""
    from edgekd.stages.runner import stable_hash

    fields: dict[str, Any] = {"teacher": teacher, "texts": stable_hash(texts), "max_length": max_length}
    tag = cache_tag(backend)
    if tag is not None:
        fields["labelling"] = tag
    return stable_hash(fields)


def labeller_for(
    recipe: Recipe, teacher_dir: Path, cache_dir: Path, check_texts: list[str], log: Callable[[str], None]
) -> TeacherLabeller:
    """The labeller `distill.labelling` asks for, its exports cached in `cache_dir`."""
    from edgekd.stages.runner import stable_hash

    setup = BackendSetup(
        teacher_dir=teacher_dir,
        max_length=recipe.data.max_length,
        cache_dir=cache_dir,
        teacher_key=stable_hash(teacher_identity(teacher_dir)),
        opset=recipe.export.opset,
    )
    return TeacherLabeller(setup, recipe.distill.labelling, list(check_texts), log)
