"""A device run judged against the build machine's report: `edgekd benchmark FOLDER --reference report.json`.

The teacher cannot run on the target board (a device install has no torch), so its figures come from the report
`compress` wrote on the build machine: the reference variant (its accuracy on the same test texts, its size and
its latency there), the gate limits and the benchmark settings. This module makes that comparison honest:

* the test texts must be the ones the reference was measured on: the report holds the sha256 of the test texts
  and labels, and other texts are refused before anything is measured;
* the measured folder is compared file by file with the one the reference signed (sha256 of every file), and a
  difference is a warning on the report's first lines;
* the gates are the reference's, judged against the reference variant with this run's measurements of the
  candidate; `beat_optimum_baseline` compares two models measured on one machine, so it is judged only when the
  Optimum baseline's folder is measured here too (under the name `optimum-int8`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekd.bench.spec import HarnessSettings
from edgekd.errors import InputError
from edgekd.recipe.schema import GatesSpec
from edgekd.report.compare import load_report, resolve_report
from edgekd.report.gates import GATES_BY_NAME, OPTIMUM_BASELINE
from edgekd.report.schema import ReferenceReport, Report, Variant

BEAT_OPTIMUM = "beat_optimum_baseline"


@dataclass(frozen=True)
class Reference:
    """The build machine's report a device run is judged against."""

    path: Path
    sha256: str
    report: Report

    @property
    def variant(self) -> Variant:
        """The reference model's record (the teacher of a pipeline run)."""
        name = self.report.reference or (self.report.variants[0].name if self.report.variants else None)
        found = self.report.variant(name) if name else None
        if found is None:
            raise InputError(
                f"{self.path} names no reference model among its variants",
                hint="pass the report.json that `edgekd compress` wrote (run folder/report/report.json)",
            )
        return found

    def describe(self) -> ReferenceReport:
        """What the device report says about the report it was judged against."""
        cpu = self.report.environment.cpu
        return ReferenceReport(
            path=str(self.path),
            sha256=self.sha256,
            recipe=self.report.recipe,
            created_utc=self.report.created_utc,
            reference=self.variant.name,
            candidate=self.report.candidate,
            machine=cpu.model if cpu is not None else None,
        )


def load_reference(path: Path) -> Reference:
    """Read the reference report (a report.json, a report folder or a run folder).

    Raises:
        InputError: It is missing or not an edgekd report with a reference variant.
    """
    file = resolve_report(path)
    report = load_report(file)
    reference = Reference(path=file, sha256=hashlib.sha256(file.read_bytes()).hexdigest(), report=report)
    _ = reference.variant  # refuse a report without its reference model now, before anything is measured
    return reference


def settings_from_reference(reference: Reference | None, given: dict[str, int | None]) -> dict[str, int]:
    """The benchmark settings of the reference run (`HarnessSettings`' defaults without one, or where it has
    none), for every option the user left unset.

    Args:
        reference: The reference report, or None.
        given: Option name (a `HarnessSettings` field) -> the user's value, None when not given.
    """
    recorded = reference.report.benchmark if reference is not None else None
    defaults = HarnessSettings()
    settings = {}
    for name, value in given.items():
        if value is None:
            value = getattr(recorded, name, None)
        settings[name] = value if value is not None else getattr(defaults, name)
    return settings


def gates_from_reference(
    reference: Reference, explicit: GatesSpec, measured_names: Sequence[str]
) -> tuple[GatesSpec, list[str]]:
    """The reference report's gate limits with the explicitly given ones on top, and a warning for each gate a
    device run cannot judge."""
    limits: dict[str, float | bool] = {}
    warnings = []
    for gate in reference.report.gates:
        if gate.name in GATES_BY_NAME:
            limits[gate.name] = gate.limit
        elif gate.name.startswith(BEAT_OPTIMUM):
            limits[BEAT_OPTIMUM] = True
    limits.update(explicit.model_dump(exclude_defaults=True))
    if limits.get(BEAT_OPTIMUM) and OPTIMUM_BASELINE not in measured_names:
        del limits[BEAT_OPTIMUM]
        warnings.append(
            f"{BEAT_OPTIMUM} was not judged: it compares two models measured on one machine; measure the "
            f"Optimum baseline's folder here too, named {OPTIMUM_BASELINE} (--names)"
        )
    return GatesSpec.model_validate(limits), warnings


def digest_of_test_texts(texts: Sequence[str], gold: Sequence[int]) -> str:
    """sha256 of the test texts and their label ids, in order: what a device run checks it measured."""
    digest = hashlib.sha256()
    for text, label in zip(texts, gold, strict=True):
        digest.update(json.dumps([text, int(label)], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def check_test_texts(reference: Reference, digest: str, n_texts: int) -> list[str]:
    """Refuse test texts other than the reference's; a warning when the reference predates the digest.

    Raises:
        InputError: The texts (or their labels or order) differ from the reference's.
    """
    recorded = reference.report.benchmark
    if recorded.test_texts_sha256 is None:
        return [
            f"the reference report {reference.path.name} does not record which test texts it measured (an "
            "older edgekd): accuracy is compared as if the texts were the same"
        ]
    if recorded.test_texts_sha256 != digest:
        counts = f"{n_texts} here, {recorded.test_texts} in the reference"
        raise InputError(
            f"the test texts differ from those the reference report was measured on ({counts})",
            hint="pass --data the test split the reference run used (same rows, labels and order), "
            "or benchmark without --reference",
        )
    return []


def file_warnings(reference: Reference, candidate: Variant) -> list[str]:
    """A warning when the measured folder's files are not the ones the reference report signed."""
    signed = reference.report.variant(reference.report.candidate or "")
    if signed is None or not signed.files or not candidate.files:
        return []
    expected = {f.path: f.sha256 for f in signed.files}
    found = {f.path: f.sha256 for f in candidate.files}
    differ = sorted(p for p in expected.keys() | found.keys() if expected.get(p) != found.get(p))
    if not differ:
        return []
    return [
        f"the measured folder is not the one the reference report signed: {', '.join(differ)} "
        f"differ from {signed.name}'s files in {reference.path.name}"
    ]


def with_reference_variant(reference: Reference, measured: list[Variant]) -> list[Variant]:
    """The reference's variant first, then this run's, with speed-up and compression against the reference.

    Accuracy differences stay unpaired: the reference's per-text predictions are not in its report.
    """
    ref = reference.variant.model_copy(deep=True)
    ref.source = f"reference report {reference.path.name} (sha256 {reference.sha256[:12]})"
    ref.raw = None
    ref_p50 = ref.latency_ms.p50 if ref.latency_ms else None
    ref_e2e = ref.latency_e2e_ms.p50 if ref.latency_e2e_ms else None
    for variant in measured:
        variant.agreement_with_reference = None
        variant.accuracy_diff_vs_reference_pts = None
        variant.speedup_p50 = _ratio(ref_p50, variant.latency_ms.p50 if variant.latency_ms else None)
        variant.speedup_e2e_p50 = _ratio(
            ref_e2e, variant.latency_e2e_ms.p50 if variant.latency_e2e_ms else None
        )
        variant.compression = _ratio(ref.size_bytes, variant.size_bytes)
        variant.params_ratio = _ratio(variant.params, ref.params)
    return [ref, *measured]


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return float(numerator) / float(denominator)
