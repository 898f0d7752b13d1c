"""Loading and building models and tokenizers, safely.

* Weights come from safetensors only, unless the recipe sets `allow_pickle: true` (pickled `.bin` files can run
  code when loaded); `trust_remote_code` stays off unless the recipe sets it.
* A model can also be built fresh from an architecture config, with a WordPiece tokenizer trained on the
  training texts, so the smoke recipe and the tests need no downloaded weights.
* A student can be made of a subset of another model's layers (DistilBERT-style initialisation).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.errors import InputError, MissingDependencyError
from edgekd.recipe.schema import ModelSpec, TokenizerBuild

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# WordPiece encodes a longer word as [UNK] (tokenizers' max_input_chars_per_word), so the trainer learns nothing
# useful from one, and its time grows with the square of a word's length: a single 1 MB space-free "word" made
# training take 800 s instead of 5 s.
MAX_WORD_CHARS = 100
# Normalising can lengthen a word (NFD splits a Hangul syllable into up to 3 letters; control characters between
# two runs are dropped, joining them), so runs well under the cap are checked too. Whitespace is the BERT
# normaliser's: space, tab, line breaks and Unicode space separators.
_MAYBE_LONG_WORD = re.compile(
    "[^ \t\n\r\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]{" + str(MAX_WORD_CHARS // 4) + ",}"
)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError("transformers") from exc
    transformers.logging.set_verbosity_error()
    return transformers


def check_weights_are_safe(folder: str, allow_pickle: bool) -> None:
    """Refuse a local folder whose only weights are pickled, unless the recipe allows it explicitly."""
    path = Path(folder)
    if not path.is_dir():
        return  # a Hub id: transformers prefers safetensors, and use_safetensors below enforces it
    if any(path.glob("*.safetensors")):
        return
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        if not allow_pickle:
            raise InputError(
                f"{folder} has only pickled weights (.bin), which can run code when loaded",
                hint="convert them to safetensors, or set allow_pickle: true for this model in the recipe",
            )
        warnings.warn(f"loading pickled weights from {folder} because the recipe allows it", stacklevel=2)
        return
    raise InputError(
        f"{folder} has no model weights (*.safetensors)", hint="point the recipe at a model folder"
    )


def load_tokenizer(source: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tf = _transformers()
    try:
        return tf.AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load a tokenizer from '{source}': {str(exc).splitlines()[0]}") from None


def load_classifier(
    source: str,
    *,
    num_labels: int | None = None,
    labels: list[str] | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a sequence classifier; with `labels`, a fresh head is attached when the checkpoint has none."""
    tf = _transformers()
    check_weights_are_safe(source, allow_pickle)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    if labels is not None:
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )
    elif num_labels is not None:
        kwargs["num_labels"] = num_labels
    try:
        return tf.AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load a model from '{source}': {str(exc).splitlines()[0]}") from None


def model_labels(source: str, trust_remote_code: bool = False) -> list[str] | None:
    """The class names a checkpoint was trained for, or None when it is not a classifier (no real id2label)."""
    tf = _transformers()
    try:
        config = tf.AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the config of '{source}': {str(exc).splitlines()[0]}") from None
    architectures = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        return None
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    names = [id2label[i] for i in sorted(id2label)]
    if all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        return None  # generic names: a head exists but nobody named its classes
    return names


def build_tokenizer(build: TokenizerBuild, texts: list[str]) -> PreTrainedTokenizerBase:
    """Train a small uncased WordPiece tokenizer on `texts` and wrap it as a BERT fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tf = _transformers()
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=build.vocab_size, special_tokens=SPECIAL_TOKENS)
    tok.train_from_iterator(_with_words_capped(texts, normalizer, pre_tokenizer), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tf.BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _with_words_capped(texts: list[str], normalizer: Any, pre_tokenizer: Any) -> Iterator[str]:
    """`texts` for the tokenizer trainer, each word cut to MAX_WORD_CHARS.

    A text is passed on unchanged unless it really has a longer word once normalised and split as the trainer
    does (almost never), so ordinary data reaches the trainer exactly as before.
    """
    for text in texts:
        if _MAYBE_LONG_WORD.search(text) is None:
            yield text
            continue
        # The trainer's own normaliser and pre-tokenizer (the tokenizer is locked while it trains).
        words = [word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]
        if all(len(word) <= MAX_WORD_CHARS for word in words):
            yield text
        else:
            yield " ".join(word[:MAX_WORD_CHARS] for word in words)


def build_from_config(config: dict[str, Any], labels: list[str], vocab_size: int) -> PreTrainedModel:
    """A fresh, randomly initialised classifier from an architecture dict (`model_type` + config fields)."""
    tf = _transformers()
    fields = dict(config)
    model_type = fields.pop("model_type")
    fields.setdefault("vocab_size", vocab_size)
    try:
        cfg = tf.AutoConfig.for_model(
            model_type,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)},
            **fields,
        )
        return tf.AutoModelForSequenceClassification.from_config(cfg)
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"cannot build a '{model_type}' model from this config: {exc}") from None


def resolve_tokenizer(
    spec: ModelSpec, texts: list[str], fallback: str | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer a model spec asks for: a folder/Hub id, a freshly trained one, or the model's own."""
    if isinstance(spec.tokenizer, TokenizerBuild):
        return build_tokenizer(spec.tokenizer, texts)
    source = spec.tokenizer or spec.model or fallback
    if source is None:
        raise InputError("a model built from 'config' needs a 'tokenizer' (a folder, or {vocab_size: N})")
    return load_tokenizer(source, spec.trust_remote_code)


def _encoder(model: PreTrainedModel) -> Any:
    base = getattr(model, model.base_model_prefix, model)
    encoder = getattr(base, "encoder", None)
    if getattr(encoder, "layer", None) is None:
        raise InputError(f"cannot find the encoder layers of a {type(model).__name__}; use init 'pretrained'")
    return encoder


def encoder_layers(model: PreTrainedModel) -> Any:
    """The `nn.ModuleList` of transformer blocks (BERT, RoBERTa, MPNet, ... keep it at `<base>.encoder.layer`)."""
    return _encoder(model).layer


def keep_layers(model: PreTrainedModel, layers: list[int]) -> PreTrainedModel:
    """`model` with only the listed encoder layers, in that order (embeddings and head are kept).

    The model is changed in place and returned: the caller loaded it for this purpose.
    """
    import torch

    encoder = _encoder(model)
    n = len(encoder.layer)
    bad = [i for i in layers if i >= n]
    if bad:
        raise InputError(f"student.layers {bad} out of range: the source model has {n} layers (0..{n - 1})")
    encoder.layer = torch.nn.ModuleList([encoder.layer[i] for i in layers])
    model.config.num_hidden_layers = len(layers)
    return model
