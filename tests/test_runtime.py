"""The torch-free runtime on exported folders: agreement with PyTorch, tokenization, errors, no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgekd.errors import InputError
from edgekd.recipe.load import load_recipe
from edgekd.runtime import Classifier, Prediction, TruncationWarning
from edgekd.stages.base import StageContext
from edgekd.stages.export import ExportStage
from edgekd.stages.quantize.stage import QuantizeStage

REPO = Path(__file__).resolve().parent.parent
MAX_LENGTH = 32  # recipes/smoke.yaml
LONG_TEXT = " ".join(["the striker scored again in the second half"] * 10)


@pytest.fixture(scope="module")
def folders(tiny_classifier_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The export and quantize folders of the tiny classifier, made by the real stages."""
    recipe = load_recipe(REPO / "recipes" / "smoke.yaml", ["export.parity_samples=8"])
    run = tmp_path_factory.mktemp("run")
    shutil.copytree(tiny_classifier_dir, run / "distill" / "model")
    for stage, needs in ((ExportStage(), "distill"), (QuantizeStage(), "export")):
        (run / stage.folder).mkdir()
        ctx = StageContext(recipe=recipe, run_dir=run, inputs={needs: run / needs}, log=lambda message: None)
        stage.run(ctx, run / stage.folder)
    return {"distill": run / "distill" / "model", "export": run / "export", "quantize": run / "quantize"}


@pytest.fixture(scope="module")
def fp32(folders: dict[str, Path]) -> Classifier:
    return Classifier.load(folders["export"], threads=1)


def torch_logits(model_dir: Path, texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    encoded = tokenizer(texts, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**encoded).logits.numpy()


def copy_folder(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# ----------------------------------------------------------------------------------------------------------
# Agreement


def test_labels_agree_with_the_pytorch_argmax(folders, fp32, toy_texts):
    texts = [*toy_texts[:48], LONG_TEXT]
    expected = torch_logits(folders["distill"], texts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        predictions = fp32.predict(texts, batch_size=16)
        logits = fp32.predict_logits(texts, batch_size=16)
    assert [p.label for p in predictions] == [fp32.labels[i] for i in expected.argmax(-1)]
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_int8_folder_matches_onnxruntime_fed_by_the_transformers_tokenizer(folders, toy_texts):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    texts = toy_texts[:16]
    tokenizer = AutoTokenizer.from_pretrained(folders["quantize"])
    encoded = tokenizer(texts, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="np")
    session = ort.InferenceSession(
        str(folders["quantize"] / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    expected = session.run(["logits"], {k: v.astype(np.int64) for k, v in encoded.items()})[0]
    int8 = Classifier.load(folders["quantize"], threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        # Same batch as above: dynamic quantization scales depend on the whole (padded) batch.
        logits = int8.predict_logits(texts, batch_size=16)
    np.testing.assert_allclose(logits, expected, atol=1e-6)


def test_prediction_carries_label_score_and_every_class_probability(fp32, toy_labels):
    prediction = fp32.predict("heavy rain hit the coast")[0]
    assert isinstance(prediction, Prediction)
    assert list(prediction.scores) == toy_labels
    assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-6)
    assert prediction.score == max(prediction.scores.values()) == prediction.scores[prediction.label]


def test_batch_size_does_not_change_fp32_logits(fp32, toy_texts):
    texts = toy_texts[:20]
    np.testing.assert_allclose(
        fp32.predict_logits(texts, batch_size=3), fp32.predict_logits(texts), atol=1e-5
    )
    assert fp32.predict_logits([]).shape == (0, len(fp32.labels))
    assert fp32.predict([]) == []


def test_session_is_set_up_for_predictable_latency(fp32):
    options = fp32.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1
    assert options.execution_mode.name == "ORT_SEQUENTIAL"


# ----------------------------------------------------------------------------------------------------------
# Tokenization


def test_encode_feeds_exactly_the_graph_inputs_as_int64(fp32):
    feed = fp32.encode(["heavy rain", "the striker scored twice in the final"])
    assert list(feed) == [i.name for i in fp32.session.get_inputs()] == list(fp32.input_names)
    shapes = {array.shape for array in feed.values()}
    assert len(shapes) == 1 and next(iter(shapes))[0] == 2
    assert all(array.dtype == np.int64 for array in feed.values())
    assert feed["attention_mask"][0].sum() < feed["attention_mask"][1].sum()  # the short text is padded


def test_empty_string_is_classified_as_cls_sep(fp32):
    feed = fp32.encode([""])
    tokens = [fp32.tokenizer.id_to_token(int(i)) for i in feed["input_ids"][0]]
    assert tokens == ["[CLS]", "[SEP]"]
    assert fp32.predict([""])[0].label in fp32.labels


def test_truncation_warns_once_per_classifier(folders):
    classifier = Classifier.load(folders["export"], threads=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        classifier.predict(["short text"])
        classifier.predict([LONG_TEXT, LONG_TEXT])
        classifier.predict([LONG_TEXT])
    truncations = [w for w in caught if issubclass(w.category, TruncationWarning)]
    assert len(truncations) == 1
    assert truncations[0].filename == __file__  # points at the caller, not at the runtime's internals
    assert f"max_length={MAX_LENGTH}" in str(truncations[0].message)
    assert classifier.encode([LONG_TEXT])["input_ids"].shape == (1, MAX_LENGTH)


def test_non_text_inputs_are_refused(fp32):
    with pytest.raises(InputError, match=r"texts\[1\] is a int"):
        fp32.predict(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(InputError, match="iterable of strings"):
        fp32.predict(None)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------
# Folders


def test_labels_fall_back_to_config_id2label_without_edgekd_json(folders, tmp_path, toy_labels):
    folder = copy_folder(folders["quantize"], tmp_path / "bare")
    (folder / "edgekd.json").unlink()
    classifier = Classifier.load(folder, threads=1)
    assert classifier.labels == toy_labels
    assert classifier.max_length == 32  # tokenizer_config.json's model_max_length, the recipe's max_length
    tokenizer_config = folder / "tokenizer_config.json"
    config = json.loads(tokenizer_config.read_text())
    del config["model_max_length"]
    tokenizer_config.write_text(json.dumps(config))
    assert Classifier.load(folder, threads=1).max_length == 64  # the tiny model's max_position_embeddings


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_tokenizer", "has no tokenizer.json"),
        ("no_model", "has no model.onnx"),
        ("no_labels", "names no classes"),
        ("foreign_inputs", "is not a text classifier this runtime can feed"),
        ("corrupt_model", "ONNX Runtime cannot load"),
    ],
)
def test_unusable_folders_raise_input_error(folders, tmp_path, breakage, message):
    folder = copy_folder(folders["export"], tmp_path / "broken")
    if breakage == "no_tokenizer":
        (folder / "tokenizer.json").unlink()
    elif breakage == "no_model":
        (folder / "model.onnx").unlink()
    elif breakage == "no_labels":
        (folder / "edgekd.json").unlink()
        config = json.loads((folder / "config.json").read_text())
        del config["id2label"]
        (folder / "config.json").write_text(json.dumps(config))
    elif breakage == "foreign_inputs":
        write_image_model(folder / "model.onnx")
    else:
        (folder / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(InputError, match=message):
        Classifier.load(folder)


def write_image_model(path: Path) -> None:
    """An ONNX graph with a float `pixel_values` input: valid ONNX, but not a text classifier."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["pixel_values"], ["logits"])],
        "image",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


# ----------------------------------------------------------------------------------------------------------
# No torch


TORCH_FREE_SCRIPT = """
import json, sys
for name in ("torch", "transformers", "optimum", "onnx", "datasets"):
    sys.modules[name] = None  # any import of these now raises ImportError
from edgekd.runtime import Classifier
classifier = Classifier.load(sys.argv[1], threads=1)
predictions = classifier.predict(json.loads(sys.argv[2]))
print(json.dumps([p.label for p in predictions]))
"""


def test_runtime_loads_and_predicts_with_torch_and_transformers_unimportable(folders, toy_texts):
    texts = [*toy_texts[:6], ""]
    completed = subprocess.run(
        [sys.executable, "-c", TORCH_FREE_SCRIPT, str(folders["quantize"]), json.dumps(texts)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    in_process = [p.label for p in Classifier.load(folders["quantize"], threads=1).predict(texts)]
    assert json.loads(completed.stdout) == in_process
