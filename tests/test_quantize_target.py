"""`quantize.target`: INT8 settings for the serving CPU, the cache key of `auto`, and the device benchmark's
warning when a folder was quantized for another CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from edgekd.artifact import QUANTIZE_TARGETS, quantized_for
from edgekd.bench.envinfo import cpu_flags_summary, cpu_target
from edgekd.bench.inputs import target_mismatch, target_warnings
from edgekd.bench.spec import MeasuredModel
from edgekd.recipe.load import load_recipe
from edgekd.recipe.schema import QuantizeSpec
from edgekd.stages.quantize.ort import (
    TARGET_PRESETS,
    build_cpu,
    quantization_settings,
    resolve_weight_type,
    target_settings,
)
from edgekd.stages.quantize.stage import QuantizeStage, quantized_manifest, target_note
from edgekd.stages.runner import stage_key

REPO = Path(__file__).resolve().parent.parent
AVX2 = {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": False, "amx_int8": False}
AVX512 = {**AVX2, "avx512f": True}
VNNI = {**AVX512, "avx512_vnni": True}
ARM = {"neon": True, "asimd": True}

# What Optimum's AutoQuantizationConfig.<target>(is_static=False) sets (optimum-onnx 0.1.0,
# optimum/onnxruntime/configuration.py): (weight type, per_channel, reduce_range).
OPTIMUM_PRESETS = {
    "avx2": ("quint8", True, False),
    "avx512": ("qint8", True, False),
    "avx512_vnni": ("qint8", True, False),
    "arm64": ("qint8", True, False),
}


def used(settings: dict[str, Any]) -> tuple[str, bool, bool]:
    return settings["weight_type"], settings["per_channel"], settings["reduce_range"]


# ----------------------------------------------------------------------------------------------------------
# Settings per target


@pytest.mark.parametrize("target", QUANTIZE_TARGETS)
def test_each_target_takes_its_optimum_preset(target):
    settings = target_settings(QuantizeSpec(target=target), flags=VNNI)  # the build CPU plays no part
    assert used(settings) == OPTIMUM_PRESETS[target]
    assert used(target_settings(QuantizeSpec(target=target), flags=AVX2)) == OPTIMUM_PRESETS[target]
    assert settings["weight_type_requested"] == "auto"
    assert settings["per_channel_requested"] is None and settings["reduce_range_requested"] is None
    for name in ("weight_type", "per_channel", "reduce_range"):
        assert settings[f"{name}_reason"].startswith(f"target {target}"), settings


@pytest.mark.parametrize("target", QUANTIZE_TARGETS)
def test_the_presets_are_what_optimum_installs(target):
    configuration = pytest.importorskip("optimum.onnxruntime.configuration")
    from onnxruntime.quantization import QuantType

    config = getattr(configuration.AutoQuantizationConfig, target)(is_static=False)
    weights = {QuantType.QInt8: "qint8", QuantType.QUInt8: "quint8"}[config.weights_dtype]
    assert (weights, config.per_channel, config.reduce_range) == OPTIMUM_PRESETS[target]
    assert config.activations_dtype == QuantType.QUInt8  # edgekd's activation type, for every target
    preset = TARGET_PRESETS[target]
    assert (preset.weight_type, preset.per_channel, preset.reduce_range) == OPTIMUM_PRESETS[target]


def test_settings_the_recipe_gives_win_over_the_target():
    spec = QuantizeSpec(target="avx2", weight_type="qint8", per_channel=False, reduce_range=True)
    settings = target_settings(spec, flags=AVX2)
    assert used(settings) == ("qint8", False, True)
    assert (settings["weight_type_requested"], settings["per_channel_requested"]) == ("qint8", False)
    assert settings["reduce_range_requested"] is True
    assert settings["weight_type_reason"] == "set in the recipe (target avx2's preset: quint8)"
    assert settings["per_channel_reason"] == "set in the recipe (target avx2's preset: True)"
    # Only what is set wins: the rest still comes from the preset.
    assert used(target_settings(QuantizeSpec(target="arm64", per_channel=False), flags=AVX2)) == (
        "qint8",
        False,
        False,
    )


@pytest.mark.parametrize("flags", [AVX2, AVX512, VNNI, ARM, {}])
def test_auto_keeps_the_build_cpu_settings_of_before(flags):
    settings = quantization_settings(QuantizeSpec(), [], flags=flags)
    assert settings["target"] == "auto"
    assert used(settings) == (resolve_weight_type("auto", flags)[0], False, False)
    assert settings["weight_type_reason"] == resolve_weight_type("auto", flags)[1]
    on = quantization_settings(QuantizeSpec(per_channel=True, reduce_range=True), [], flags=flags)
    assert (on["per_channel"], on["reduce_range"]) == (True, True)
    assert on["per_channel_reason"] == "set in the recipe"


# ----------------------------------------------------------------------------------------------------------
# Cache key


def quantize_key(*overrides: str) -> str:
    recipe = load_recipe(REPO / "recipes" / "smoke.yaml", list(overrides))
    return stage_key(QuantizeStage(), recipe, {"export": "pinned"})


def test_target_auto_leaves_the_quantize_key_as_it_was():
    recipe = load_recipe(REPO / "recipes" / "smoke.yaml")
    params = QuantizeStage().params(recipe)
    assert "target" not in params["quantize"]
    # The formula before targets: the section as dumped then (per_channel / reduce_range were False by default).
    before = {**recipe.quantize.model_dump(mode="json", exclude={"target"}), "per_channel": False}
    before["reduce_range"] = False
    assert params["quantize"] == before
    assert quantize_key("quantize.target=auto") == quantize_key()
    assert quantize_key("quantize.per_channel=false") == quantize_key()


def test_a_named_target_has_its_own_key():
    keys = {target: quantize_key(f"quantize.target={target}") for target in QUANTIZE_TARGETS}
    assert len({quantize_key(), *keys.values()}) == len(QUANTIZE_TARGETS) + 1
    # The key follows what the quantizer gets: the preset's per_channel, asked for or not, is the same model.
    assert quantize_key("quantize.target=arm64", "quantize.per_channel=true") == keys["arm64"]
    assert quantize_key("quantize.target=arm64", "quantize.per_channel=false") != keys["arm64"]


# ----------------------------------------------------------------------------------------------------------
# The build CPU and edgekd.json


@pytest.mark.parametrize(
    ("flags", "machine", "expected"),
    [
        (AVX2, "x86_64", "avx2"),
        (AVX512, "x86_64", "avx512"),
        (VNNI, "x86_64", "avx512_vnni"),
        ({**AVX2, "avx_vnni": True}, "x86_64", "avx512_vnni"),  # AVX-VNNI runs the same u8s8 kernels
        (ARM, "aarch64", "arm64"),
        ({}, "arm64", "arm64"),
        ({}, "x86_64", None),  # no /proc/cpuinfo: unknown, never guessed
        ({"avx2": False}, "x86_64", None),
    ],
)
def test_a_cpu_fits_one_target(flags, machine, expected):
    assert cpu_target(flags, machine) == expected


def test_build_cpu_record_summarises_the_flags():
    assert build_cpu(VNNI, "x86_64") == {
        "machine": "x86_64",
        "flags": "avx2 avx512f avx512_vnni",
        "target": "avx512_vnni",
    }
    assert cpu_flags_summary({}) == "unknown"


def manifest_for(export_dir: Path, spec: QuantizeSpec, build: dict[str, Any]) -> dict[str, Any]:
    from edgekd.stages.quantize.ort import Prepared

    settings = quantization_settings(spec, [], flags={})
    accuracy = {"fp32_onnx": 1.0, "int8_onnx": 1.0}
    return quantized_manifest(export_dir, settings, accuracy, Prepared(export_dir / "model.onnx"), [], build)


def test_edgekd_json_records_the_target_and_the_build_cpu(tmp_path):
    (tmp_path / "edgekd.json").write_text(json.dumps({"labels": ["a", "b"]}))
    on_vnni = build_cpu(VNNI, "x86_64")
    auto = manifest_for(tmp_path, QuantizeSpec(), on_vnni)["quantization"]
    assert (auto["target"], auto["target_resolved"], auto["build_cpu"]) == ("auto", "avx512_vnni", on_vnni)
    assert quantized_for({"quantization": auto}) == "avx512_vnni"
    arm = manifest_for(tmp_path, QuantizeSpec(target="arm64"), on_vnni)["quantization"]
    assert (arm["target"], arm["target_resolved"], arm["settings"]["target"]) == ("arm64", "arm64", "arm64")
    assert quantized_for({"quantization": arm}) == "arm64"


def test_folders_without_a_recorded_target_are_quantized_for_nothing_known():
    assert quantized_for(None) is None
    assert quantized_for({"labels": ["a"]}) is None  # an fp32 export
    assert quantized_for({"quantization": {"tool": "x", "settings": {}}}) is None  # from before targets
    assert quantized_for({"quantization": {"target": "auto", "target_resolved": None}}) is None


def test_the_log_notes_a_target_that_is_not_the_build_cpu():
    assert target_note("auto", build_cpu(AVX2, "x86_64")) is None
    assert target_note("avx2", build_cpu(AVX2, "x86_64")) is None
    note = target_note("arm64", build_cpu(AVX2, "x86_64"))
    assert note and "target arm64, built on avx2" in note


# ----------------------------------------------------------------------------------------------------------
# The device benchmark's warning


def folder_quantized_for(tmp_path: Path, spec: QuantizeSpec, build: dict[str, Any]) -> Path:
    folder = tmp_path / "int8"
    folder.mkdir()
    (folder / "edgekd.json").write_text(json.dumps({"labels": ["a", "b"]}))
    manifest = manifest_for(folder, spec, build)
    (folder / "edgekd.json").write_text(json.dumps(manifest))
    return folder


def env_of(flags: dict[str, bool], machine: str) -> dict[str, Any]:
    """A fake machine description, shaped as `edgekd.bench.envinfo.environment()` returns it."""
    return {"cpu": {"flags": flags, "model": "fake"}, "machine": machine}


@pytest.mark.parametrize(
    ("spec", "build", "flags", "machine", "expected"),
    [
        (QuantizeSpec(target="avx512_vnni"), (AVX2, "x86_64"), AVX2, "x86_64", "quantized for avx512_vnni"),
        (QuantizeSpec(target="avx2"), (AVX2, "x86_64"), ARM, "aarch64", "quantized for avx2"),
        (QuantizeSpec(), (VNNI, "x86_64"), AVX2, "x86_64", "quantized for avx512_vnni (target auto"),
        (QuantizeSpec(target="arm64"), (AVX2, "x86_64"), AVX512, "x86_64", "measured on an avx512 CPU"),
    ],
)
def test_a_folder_quantized_for_another_cpu_gets_one_warning(tmp_path, spec, build, flags, machine, expected):
    folder = folder_quantized_for(tmp_path, spec, build_cpu(*build))
    warnings = target_warnings(MeasuredModel("int8", folder, "onnx"), env_of(flags, machine))
    assert len(warnings) == 1 and expected in warnings[0], warnings
    assert warnings[0].startswith("int8 was quantized for")
    assert f"set quantize.target: {cpu_target(flags, machine)}" in warnings[0]


def test_s8_weights_on_a_cpu_without_vnni_name_the_saturation(tmp_path):
    folder = folder_quantized_for(tmp_path, QuantizeSpec(target="arm64"), build_cpu(AVX2, "x86_64"))
    (warning,) = target_warnings(MeasuredModel("int8", folder, "onnx"), env_of(AVX2, "x86_64"))
    assert "saturate in int16" in warning
    u8 = target_mismatch("int8", "avx2", "arm64", {"target": "avx2", "settings": {"weight_type": "quint8"}})
    assert u8 and "saturate" not in u8


@pytest.mark.parametrize(
    ("spec", "build", "flags", "machine"),
    [
        (QuantizeSpec(target="avx512_vnni"), (AVX2, "x86_64"), VNNI, "x86_64"),
        (QuantizeSpec(target="arm64"), (AVX2, "x86_64"), ARM, "aarch64"),
        (QuantizeSpec(), (AVX2, "x86_64"), AVX2, "x86_64"),  # auto, measured where it was built
        (QuantizeSpec(target="avx2"), (AVX2, "x86_64"), {}, "x86_64"),  # this CPU's flags unknown
        (QuantizeSpec(), ({}, "x86_64"), VNNI, "x86_64"),  # the build CPU's flags were unknown
    ],
)
def test_no_warning_on_the_target_or_when_either_cpu_is_unknown(tmp_path, spec, build, flags, machine):
    folder = folder_quantized_for(tmp_path, spec, build_cpu(*build))
    assert target_warnings(MeasuredModel("int8", folder, "onnx"), env_of(flags, machine)) == []


def test_fp32_old_or_damaged_folders_get_no_target_warning(tmp_path, onnx_dir):
    env = env_of(ARM, "aarch64")
    assert target_warnings(MeasuredModel("fp32", onnx_dir, "onnx"), env) == []
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "edgekd.json").write_text("{not json")
    assert target_warnings(MeasuredModel("damaged", damaged, "onnx"), env) == []


@pytest.mark.slow
def test_the_benchmark_report_carries_the_target_warning(tmp_path, onnx_dir, int8_dir, toy_data):
    from edgekd.bench.envinfo import cpu_flags
    from edgekd.bench.harness import benchmark_folders
    from edgekd.bench.inputs import data_spec_for
    from edgekd.bench.spec import HarnessSettings

    here = build_cpu()
    foreign = "avx2" if here["target"] == "arm64" else "arm64"
    folder = tmp_path / "int8-foreign"
    shutil.copytree(int8_dir, folder)
    manifest = json.loads((folder / "edgekd.json").read_text())
    manifest["quantization"] = {"target": foreign, "target_resolved": foreign, "settings": {}}
    (folder / "edgekd.json").write_text(json.dumps(manifest))
    models = [MeasuredModel("fp32", onnx_dir, "onnx"), MeasuredModel("int8", folder, "onnx")]
    settings = HarnessSettings(
        latency_samples=4,
        warmup=0,
        max_length=32,
        seq_lengths=(16,),
        seq_samples=2,
        throughput_batch_sizes=(8,),
    )
    report = benchmark_folders(
        models, data_spec_for(toy_data, 32), tmp_path / "report", settings, log=lambda _: None
    )
    target_lines = [w for w in report.warnings if "was quantized for" in w]
    if cpu_target(cpu_flags(), here["machine"]) is None:
        assert target_lines == []  # this machine's CPU is unknown: nothing to compare with
    else:
        assert len(target_lines) == 1 and target_lines[0].startswith(f"int8 was quantized for {foreign}")
        assert target_lines[0] in (tmp_path / "report" / "report.md").read_text()
