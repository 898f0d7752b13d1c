"""Teacher labelling backends (`distill.labelling`): each reproduces the fp32 PyTorch teacher, a backend that
does not is refused (or `auto` falls back with a warning), and cache and stage keys of existing runs hold."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from recipe_history import DISTILL_KEYS, earlier

from edgekd.errors import InputError, StageError
from edgekd.recipe.load import load_recipe
from edgekd.recipe.schema import Recipe
from edgekd.stages.base import StageContext
from edgekd.stages.distill import labelling
from edgekd.stages.distill.labelling import (
    AUTO,
    REFERENCE,
    BackendSetup,
    LogitFn,
    TeacherLabeller,
    logits_cache_key,
    torch_teacher_logits,
)
from edgekd.stages.distill.stage import DistillStage, cached_teacher_logits
from edgekd.stages.runner import stable_hash

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "recipes" / "smoke.yaml"
MAX_LENGTH = 32
# The logit cache key edgekd computed before backends existed, for teacher "teacher-key", max_length 32 and
# the texts below: stable_hash({"teacher", "texts": stable_hash(texts), "max_length"}).
LEGACY_CACHE_KEY = "199d45de162fdeec"
LEGACY_TEXTS = ["rain fell", "the team won"]


@pytest.fixture(scope="module")
def setup(tiny_classifier_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> BackendSetup:
    """One cache folder for the module, so the tiny teacher is exported to ONNX once."""
    return BackendSetup(
        teacher_dir=tiny_classifier_dir,
        max_length=MAX_LENGTH,
        cache_dir=tmp_path_factory.mktemp("labelling_cache"),
        teacher_key="tiny",
    )


@pytest.fixture(scope="module")
def reference(setup: BackendSetup, toy_texts: list[str]) -> np.ndarray:
    return torch_teacher_logits(setup.teacher_dir, toy_texts, MAX_LENGTH)


@pytest.fixture
def logs_ctx(tmp_path: Path) -> Iterator[tuple[StageContext, list[str]]]:
    logs: list[str] = []
    yield StageContext(recipe=load_recipe(SMOKE), run_dir=tmp_path / "run", inputs={}, log=logs.append), logs


def permuted(setup: BackendSetup) -> LogitFn:
    """A broken fast path: the teacher's logits with the classes shifted by one."""
    return lambda texts, desc: np.roll(
        torch_teacher_logits(setup.teacher_dir, texts, setup.max_length), 1, -1
    )


# ----------------------------------------------------------------------------------------------------------
# Backends reproduce the fp32 teacher


@pytest.mark.parametrize(
    ("backend", "atol", "min_agreement"),
    [("torch-fp32", 0.0, 1.0), ("onnx-fp32", 1e-4, 1.0), ("onnx-int8", 0.3, 0.6)],
)
def test_each_backend_matches_the_fp32_teacher(
    backend: str,
    atol: float,
    min_agreement: float,
    setup: BackendSetup,
    reference: np.ndarray,
    toy_texts: list[str],
) -> None:
    logits = labelling.FACTORIES[backend](setup)(toy_texts, "test")
    assert logits.shape == reference.shape and logits.dtype == np.float32
    np.testing.assert_allclose(logits, reference, atol=atol, rtol=0)
    # INT8 of a random tiny model moves near-tied logits across each other: looser, but far from chance.
    assert np.mean(logits.argmax(-1) == reference.argmax(-1)) >= min_agreement


def test_the_onnx_export_is_made_once(setup: BackendSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    labelling.exported_teacher(setup)
    monkeypatch.setattr("edgekd.stages.export.export_onnx", lambda *a: pytest.fail("exported again"))
    folder = labelling.exported_teacher(setup)
    assert (folder / "model.onnx").is_file()
    assert [p.name for p in setup.cache_dir.iterdir() if p.name.startswith(".")] == [], "no partial export"


def test_bf16_runs_where_native_and_is_refused_elsewhere(
    setup: BackendSetup, reference: np.ndarray, toy_texts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(labelling, "bf16_native", lambda flags=None: False)
    with pytest.raises(InputError, match="native bf16") as err:
        labelling.FACTORIES["torch-bf16"](setup)
    assert err.value.hint and "distill.labelling" in err.value.hint
    monkeypatch.setattr(labelling, "bf16_native", lambda flags=None: True)
    logits = labelling.FACTORIES["torch-bf16"](setup)(toy_texts, "test")
    np.testing.assert_allclose(logits, reference, atol=0.1, rtol=0)  # bf16 keeps 8 bits of mantissa


def test_bf16_native_reads_the_cpu_flags() -> None:
    assert labelling.bf16_native({"avx2", "avx512_bf16"}) and labelling.bf16_native({"amx_bf16"})
    assert not labelling.bf16_native({"avx2", "avx512f", "avx512_vnni"})


# ----------------------------------------------------------------------------------------------------------
# Faithfulness: measured, recorded, enforced


def test_a_faithful_fast_path_is_checked_and_recorded(setup: BackendSetup, toy_texts: list[str]) -> None:
    labeller = TeacherLabeller(setup, "onnx-fp32", toy_texts[:20], log=lambda _: None)
    _, backend = labeller.label(toy_texts, "train")
    record = labeller.record()
    assert backend == "onnx-fp32" and record["backend"] == "onnx-fp32" and record["fallback"] is None
    check = record["faithfulness"]
    assert check["rows"] == 20 and check["argmax_agreement"] == 1.0 and check["max_abs_diff"] < 1e-4
    assert record["passes"][0]["split"] == "train" and record["passes"][0]["rows"] == len(toy_texts)


def test_a_wrong_fast_path_is_refused(
    setup: BackendSetup, toy_texts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(labelling.FACTORIES, "onnx-fp32", permuted)
    labeller = TeacherLabeller(setup, "onnx-fp32", toy_texts, log=lambda _: None)
    with pytest.raises(StageError, match=r"onnx-fp32 agrees with the fp32 PyTorch teacher on \d") as err:
        labeller.label(toy_texts, "train")
    assert err.value.hint and "torch-fp32" in err.value.hint


def test_auto_falls_back_to_torch_fp32_with_a_warning(
    setup: BackendSetup, reference: np.ndarray, toy_texts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for fast in labelling.AUTO_FAST:  # on a bf16 CPU auto tries torch-bf16, then onnx-fp32
        monkeypatch.setitem(labelling.FACTORIES, fast, permuted)
    monkeypatch.setattr(labelling, "AUTO_MIN_ROWS", 1)  # the toy split counts as a large pass
    logs: list[str] = []
    labeller = TeacherLabeller(setup, AUTO, toy_texts, log=logs.append)
    logits, backend = labeller.label(toy_texts, "train")
    assert backend == REFERENCE
    np.testing.assert_array_equal(logits, reference)
    assert any(line.startswith("warning: teacher labelling falls back to torch-fp32") for line in logs), logs
    record = labeller.record()
    assert record["backend"] == REFERENCE and "agrees" in record["fallback"]
    assert record["faithfulness"]["argmax_agreement"] < labelling.MIN_AGREEMENT


def test_auto_uses_onnx_for_a_large_pass_and_torch_for_a_small_one(
    setup: BackendSetup, toy_texts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(labelling, "AUTO_MIN_ROWS", 10)
    monkeypatch.setattr(labelling, "bf16_native", lambda flags=None: False)  # an AVX2 machine
    labeller = TeacherLabeller(setup, AUTO, toy_texts, log=lambda _: None)
    assert labeller.label(toy_texts[:5], "validation")[1] == REFERENCE
    assert labeller.record()["faithfulness"] is None, "a small pass pays for no export or check"
    assert labeller.label(toy_texts, "train")[1] == "onnx-fp32"
    assert labeller.label(toy_texts[:5], "unlabeled")[1] == "onnx-fp32", "once exported, it labels every pass"


def test_auto_tries_onnx_fp32_when_bf16_is_refused(
    setup: BackendSetup, toy_texts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(labelling, "bf16_native", lambda flags=None: True)
    monkeypatch.setitem(labelling.FACTORIES, "torch-bf16", permuted)
    monkeypatch.setattr(labelling, "AUTO_MIN_ROWS", 1)
    logs: list[str] = []
    labeller = TeacherLabeller(setup, AUTO, toy_texts, log=logs.append)
    assert labeller.label(toy_texts, "train")[1] == "onnx-fp32"
    assert any(line.startswith("warning: teacher labelling does not use torch-bf16") for line in logs), logs
    assert labeller.record()["faithfulness"]["backend"] == "onnx-fp32"


@pytest.mark.parametrize(
    ("flags", "fast"),
    [({"avx2"}, "onnx-fp32"), ({"avx2", "avx512_bf16"}, "torch-bf16"), ({"amx_bf16"}, "torch-bf16")],
)
def test_auto_labels_large_passes_in_bf16_only_where_the_cpu_has_it(flags: set[str], fast: str) -> None:
    assert labelling.auto_fast(flags) == fast


def test_auto_reuses_either_fast_backends_cache(
    setup: BackendSetup, toy_texts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run folder labelled on an AVX2 machine (onnx-fp32) keeps its logits when resumed on a bf16 one."""
    monkeypatch.setattr(labelling, "bf16_native", lambda flags=None: True)
    caches = TeacherLabeller(setup, AUTO, toy_texts, log=lambda _: None).acceptable_caches()
    assert caches == [REFERENCE, "torch-bf16", "onnx-fp32"]
    assert TeacherLabeller(setup, "torch-bf16", toy_texts).acceptable_caches() == ["torch-bf16"]


# ----------------------------------------------------------------------------------------------------------
# Cache and stage keys


def test_the_torch_fp32_cache_key_is_the_one_earlier_runs_wrote() -> None:
    assert logits_cache_key("teacher-key", LEGACY_TEXTS, MAX_LENGTH, "torch-fp32") == LEGACY_CACHE_KEY
    others = {logits_cache_key("teacher-key", LEGACY_TEXTS, MAX_LENGTH, b) for b in labelling.BACKENDS[1:]}
    assert len(others) == len(labelling.BACKENDS) - 1 and LEGACY_CACHE_KEY not in others


def test_logits_cached_by_an_earlier_run_are_reused(
    logs_ctx: tuple[StageContext, list[str]], tiny_classifier_dir: Path, toy_texts: list[str]
) -> None:
    ctx, logs = logs_ctx
    texts = toy_texts[:6]
    first = cached_teacher_logits(tiny_classifier_dir, texts, "train", ctx.recipe, ctx)
    [path] = (ctx.run_dir / "cache").glob("teacher_logits-train-*.npy")
    teacher = labelling.teacher_identity(tiny_classifier_dir)
    legacy = stable_hash({"teacher": teacher, "texts": stable_hash(texts), "max_length": MAX_LENGTH})
    assert path.name == f"teacher_logits-train-{legacy}.npy"
    marked = first + 100.0  # proves the file is read, not recomputed
    np.save(path, marked)
    for requested in ("auto", "torch-fp32"):
        recipe = load_recipe(SMOKE, [f"distill.labelling={requested}"])
        np.testing.assert_array_equal(
            cached_teacher_logits(tiny_classifier_dir, texts, "train", recipe, ctx), marked
        )
    onnx = load_recipe(SMOKE, ["distill.labelling=onnx-fp32"])
    fresh = cached_teacher_logits(tiny_classifier_dir, texts, "train", onnx, ctx)
    np.testing.assert_allclose(fresh, first, atol=1e-4)  # its own cache file, not the marked one
    assert len(list((ctx.run_dir / "cache").glob("teacher_logits-train-*.npy"))) == 2
    assert "(onnx-fp32)" in logs[-1]


@pytest.mark.parametrize("name", sorted(DISTILL_KEYS))
def test_distill_key_is_unchanged_while_labelling_is_auto(name: str) -> None:
    recipe = load_recipe(REPO / "recipes" / name, earlier(name))
    assert recipe.distill.labelling == AUTO
    params = DistillStage().params(recipe)
    assert "labelling" not in params["distill"]
    assert stable_hash(params["distill"]) == DISTILL_KEYS[name]
    keys = {stable_hash(params)}
    for backend in labelling.BACKENDS:
        chosen: Recipe = load_recipe(
            REPO / "recipes" / name, [*earlier(name), f"distill.labelling={backend}"]
        )
        assert DistillStage().params(chosen)["distill"]["labelling"] == backend
        keys.add(stable_hash(DistillStage().params(chosen)))
    assert len(keys) == 1 + len(labelling.BACKENDS)


def test_an_unknown_backend_is_a_recipe_error() -> None:
    from edgekd.errors import RecipeError

    with pytest.raises(RecipeError) as err:
        load_recipe(SMOKE, ["distill.labelling=onnx-fp16"])
    assert "distill.labelling" in "\n".join(err.value.problems)


def test_distill_stage_json_records_the_labelling_and_its_check(
    tmp_path: Path, toy_data: Path, tiny_classifier_dir: Path
) -> None:
    from edgekd.stages.runner import run_stage
    from edgekd.stages.teacher import TeacherStage

    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"name: tiny\nseed: 3\ndata: {{path: {toy_data}, max_length: 32}}\n"
        f"teacher: {{model: {tiny_classifier_dir}}}\nstudent: {{init: layers, layers: [1]}}\n"
        "distill: {epochs: 1, batch_size: 32, learning_rate: 0.003, max_steps: 2, labelling: onnx-fp32}\n"
    )
    recipe = load_recipe(path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    key, _, _ = run_stage(TeacherStage(), recipe, run_dir, {}, log=lambda _: None)
    run_stage(DistillStage(), recipe, run_dir, {"teacher": key}, log=lambda _: None)
    record = json.loads((run_dir / "distill" / "stage.json").read_text())["metrics"]["labelling"]
    assert record["requested"] == "onnx-fp32" and record["backend"] == "onnx-fp32"
    check = record["faithfulness"]
    assert check["argmax_agreement"] == 1.0 and check["max_abs_diff"] < 1e-4 and check["rows"] > 0
    assert [p["split"] for p in record["passes"]] == ["train", "validation"]
    assert {p["backend"] for p in record["passes"]} == {"onnx-fp32"}
