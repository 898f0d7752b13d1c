"""Shared fixtures: tiny models built from configs and tokenizers trained in the test session.

No network, no large files: everything is made here from the toy dataset committed under recipes/data.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
TOY_DATA = REPO / "recipes" / "data" / "toy_topics"
TINY_BERT = {
    "model_type": "bert",
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


@pytest.fixture(scope="session")
def toy_data() -> Path:
    return TOY_DATA


@pytest.fixture(scope="session")
def toy_texts() -> list[str]:
    import json

    lines = (TOY_DATA / "train.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines]


@pytest.fixture(scope="session")
def toy_labels() -> list[str]:
    return (TOY_DATA / "labels.txt").read_text().split()


@pytest.fixture(scope="session")
def tiny_tokenizer(toy_texts):
    from edgekd.models import build_tokenizer
    from edgekd.recipe.schema import TokenizerBuild

    return build_tokenizer(TokenizerBuild(vocab_size=200), toy_texts)


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory, tiny_tokenizer, toy_labels) -> Path:
    """A saved tiny BERT sequence classifier (random weights, real id2label) with its tokenizer."""
    import torch

    from edgekd.models import build_from_config

    torch.manual_seed(0)
    model = build_from_config(TINY_BERT, toy_labels, vocab_size=len(tiny_tokenizer))
    folder = tmp_path_factory.mktemp("tiny_classifier")
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


# The tiny classifier as the export and quantize stages lay out their folders (edgekd.json records max_length).
ONNX_MAX_LENGTH = 32
ONNX_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory, tiny_classifier_dir, toy_labels) -> Path:
    """The tiny classifier exported to ONNX (fp32), laid out as the quantize stage lays out its folder."""
    from optimum.exporters.onnx import main_export

    folder = tmp_path_factory.mktemp("onnx_fp32")
    main_export(str(tiny_classifier_dir), output=folder, task="text-classification", do_validation=False)
    _complete_onnx_folder(folder, tiny_classifier_dir, toy_labels)
    return folder


@pytest.fixture(scope="session")
def int8_dir(tmp_path_factory, onnx_dir, tiny_classifier_dir, toy_labels) -> Path:
    """The same model after dynamic INT8 quantization, as <run>/quantize/ holds it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tmp_path_factory.mktemp("onnx_int8")
    quantize_dynamic(onnx_dir / "model.onnx", folder / "model.onnx", weight_type=QuantType.QInt8)
    shutil.copy(onnx_dir / "config.json", folder / "config.json")
    _complete_onnx_folder(folder, tiny_classifier_dir, toy_labels)
    return folder


def _complete_onnx_folder(folder: Path, source: Path, labels: list[str]) -> None:
    for name in ONNX_TOKENIZER_FILES:
        if not (folder / name).exists():
            shutil.copy(source / name, folder / name)
    (folder / "edgekd.json").write_text(json.dumps({"labels": labels, "max_length": ONNX_MAX_LENGTH}))
