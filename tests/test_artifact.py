"""edgekd.artifact, the shipped folder's contract: torch-free, and the one source of its facts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd import artifact
from edgekd.errors import InputError

REPO = Path(__file__).resolve().parent.parent


def test_artifact_imports_neither_torch_nor_transformers_nor_onnx():
    script = (
        "import edgekd.artifact, sys; "
        "assert not {'torch', 'transformers', 'onnx'} & set(sys.modules), "
        "sorted({'torch', 'transformers', 'onnx'} & set(sys.modules))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )
    assert completed.returncode == 0, completed.stderr


def test_the_worker_module_loads_no_numeric_library_before_it_sets_the_thread_caps():
    script = (
        "import edgekd.bench.worker, sys; "
        "print(sorted({'numpy', 'onnxruntime', 'tokenizers', 'torch'} & set(sys.modules)))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_one_thread_env_caps_every_pool_and_switches_off_the_tokenizers_pool():
    from edgekd.bench import envinfo, worker

    env = artifact.thread_env(3)
    assert set(env) == set(artifact.THREAD_ENV_VARS)
    assert env["TOKENIZERS_PARALLELISM"] == "false"
    assert {env[name] for name in artifact.THREAD_ENV_VARS if name != "TOKENIZERS_PARALLELISM"} == {"3"}
    assert envinfo.THREAD_ENV_VARS is artifact.THREAD_ENV_VARS
    assert worker.thread_env(3) == env


def test_labels_come_from_the_manifest_then_from_id2label(tmp_path):
    assert artifact.read_labels(tmp_path, {"labels": ["b", "a"]}, {"id2label": {"0": "x"}}) == ["b", "a"]
    assert artifact.read_labels(tmp_path, None, {"id2label": {"1": "y", "0": "x"}}) == ["x", "y"]
    with pytest.raises(InputError, match="not 0 to 1"):
        artifact.read_labels(tmp_path, None, {"id2label": {"0": "x", "2": "y"}})
    with pytest.raises(InputError, match="names no classes"):
        artifact.read_labels(tmp_path, {}, {})


def test_max_length_comes_from_the_manifest_then_the_tokenizer_then_the_positions(tmp_path):
    assert artifact.read_max_length(tmp_path, {"max_length": 64}, {"max_position_embeddings": 32}) == 64
    assert artifact.read_max_length(tmp_path, None, {"max_position_embeddings": 2048}) == 512
    assert artifact.read_max_length(tmp_path, None, {"max_position_embeddings": 40}) == 40
    (tmp_path / artifact.TOKENIZER_CONFIG_FILE).write_text(json.dumps({"model_max_length": 100}))
    assert artifact.read_max_length(tmp_path, None, {"max_position_embeddings": 40}) == 100
    with pytest.raises(InputError, match="not a token count"):
        artifact.read_max_length(tmp_path, {"max_length": True}, None)


def test_the_worker_default_max_length_is_the_runtime_s_for_onnx_and_the_recipe_s_for_pytorch(tmp_path):
    from edgekd.bench.worker import PYTORCH_DEFAULT_MAX_LENGTH, default_max_length
    from edgekd.recipe.schema import DataSpec

    assert DataSpec.model_fields["max_length"].default == PYTORCH_DEFAULT_MAX_LENGTH
    (tmp_path / artifact.CONFIG_FILE).write_text(json.dumps({"max_position_embeddings": 64}))
    assert default_max_length(tmp_path, "onnx") == 64  # what Classifier.load would read
    assert default_max_length(tmp_path, "pytorch") == PYTORCH_DEFAULT_MAX_LENGTH
    (tmp_path / artifact.MANIFEST_FILE).write_text(json.dumps({"max_length": 24}))
    assert default_max_length(tmp_path, "onnx") == default_max_length(tmp_path, "pytorch") == 24


def test_usable_positions_leave_out_roberta_s_padding_offset():
    assert artifact.usable_positions({"max_position_embeddings": 514, "model_type": "roberta"}) == 512
    assert artifact.usable_positions({"max_position_embeddings": 512, "model_type": "bert"}) == 512
    assert artifact.usable_positions({"max_position_embeddings": True}) is None
    assert artifact.usable_positions(None) is None
