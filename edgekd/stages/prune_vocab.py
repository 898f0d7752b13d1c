"""The prune_vocab stage (optional, between distill and export): shrink the embedding matrix and the vocabulary.

A student's word-embedding matrix is often its largest tensor (MiniLM-L6: 30,522 x 384 = 11.7M of 22.7M
parameters) while one domain's training texts use a few thousand tokens. This stage keeps:

* every special token ([PAD], [UNK], [CLS], [SEP], [MASK] and any other added special token);
* every token the tokenized training texts use at least `min_count` times;
* `reserve` further tokens: first the most frequent training tokens below `min_count`, then the lowest
  original ids (WordPiece trainers assign ids roughly by frequency after the special tokens and alphabet).

Tokens keep their relative order, so the new id of a token is its rank among the kept ones.

Why outputs do not change for kept text: WordPiece is greedy longest-match-first. If every piece of a word's
original tokenization is kept, no longer candidate can appear (the new vocabulary is a subset), so the word
tokenizes to the same pieces, whose embedding rows are copied unchanged: the logits are bit-for-bit equal. A
word whose original pieces were dropped is re-split into kept pieces when they cover it ("af" -> "a", "##f"),
else it becomes a single [UNK], as WordPiece does for any word it cannot cover. stage.json reports the share of
validation tokens that end up [UNK] and the validation accuracy before and after.

Only WordPiece tokenizers (BERT-style `tokenizer.json`) are supported; others fail with an InputError.

Output: `model/` (pruned model + tokenizer files, a Hugging Face folder the export stage reads) and stage.json
with the vocabulary and byte sizes before and after and the validation accuracy of both models.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgekd.artifact import SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, VOCAB_FILE
from edgekd.data import load_splits
from edgekd.errors import InputError, StageError
from edgekd.recipe.schema import PruneVocabSpec, Recipe
from edgekd.stages.base import StageBase, StageContext, StageResult
from edgekd.stages.runner import fingerprint_path, write_json

EVAL_BATCH_SIZE = 64


class PruneVocabStage(StageBase):
    """Distilled student -> the same student with only the vocabulary its training data needs."""

    name = "prune_vocab"
    folder = "prune_vocab"

    def __init__(self, source: str = "distill") -> None:
        """Args: source: the stage whose `model/` folder is pruned (distill, or calibrate when enabled)."""
        self.source = source
        self.needs: tuple[str, ...] = (source,)

    def params(self, recipe: Recipe) -> dict[str, Any]:
        """The kept tokens depend on the pruning settings and the training texts."""
        return {
            "prune_vocab": recipe.prune_vocab.model_dump(mode="json"),
            "seed": recipe.seed,
            "data": recipe.data.model_dump(mode="json"),
            "data_files": fingerprint_path(recipe.data.path),
        }

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult:
        recipe = ctx.recipe
        source = ctx.inputs[self.source] / "model"
        target = out_dir / "model"
        splits = load_splits(recipe.data, recipe.seed)
        tokenizer_data = read_wordpiece_tokenizer(source)
        counts = count_tokens(source, splits.texts("train"))
        keep = select_kept_ids(
            vocab_size=len(tokenizer_data["model"]["vocab"]),
            counts=counts,
            special=special_token_ids(source, tokenizer_data),
            spec=recipe.prune_vocab,
        )
        ctx.log(f"prune_vocab: keeping {len(keep)} of {len(tokenizer_data['model']['vocab'])} tokens")
        prune_model_folder(source, target, keep, tokenizer_data)
        metrics = size_metrics(source, target, len(tokenizer_data["model"]["vocab"]), len(keep))
        metrics.update(
            validation_metrics(
                source, target, splits.texts("validation"), splits.label_ids("validation"), recipe
            )
        )
        ctx.log(
            f"prune_vocab: {metrics['bytes_before'] / 1e6:.1f} -> {metrics['bytes_after'] / 1e6:.1f} MB; "
            f"validation accuracy {metrics['validation_accuracy_before']:.4f} -> "
            f"{metrics['validation_accuracy_after']:.4f}"
        )
        return StageResult(
            metrics=metrics, summary=f"vocabulary {metrics['vocab_before']} -> {metrics['vocab_after']}"
        )


# ----------------------------------------------------------------------------------------------------------
# Choosing the tokens


def read_wordpiece_tokenizer(folder: Path) -> dict[str, Any]:
    """The folder's tokenizer.json, checked to be a WordPiece tokenizer with a contiguous vocabulary.

    Raises:
        InputError: no tokenizer.json, or another tokenizer model (BPE, Unigram) that this stage cannot prune.
    """
    path = folder / TOKENIZER_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"vocabulary pruning needs {path}: {exc}") from None
    model = data.get("model") or {}
    if model.get("type") != "WordPiece":
        raise InputError(
            f"vocabulary pruning supports WordPiece tokenizers only; {path} is {model.get('type')!r}",
            hint="set prune_vocab.enabled: false for this model",
        )
    ids = sorted(model["vocab"].values())
    if ids != list(range(len(ids))):
        raise InputError(f"{path}: the vocabulary ids are not 0..n-1; cannot prune it safely")
    return data


def count_tokens(folder: Path, texts: Iterable[str]) -> Counter[int]:
    """How often each token id occurs in the texts, tokenized fully (no truncation, no special tokens)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    counts: Counter[int] = Counter()
    for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        counts.update(encoding.ids)
    return counts


def special_token_ids(folder: Path, tokenizer_data: dict[str, Any]) -> set[int]:
    """Ids of every special token: added special tokens, the WordPiece unk token and special_tokens_map.json."""
    vocab: dict[str, int] = tokenizer_data["model"]["vocab"]
    ids = {token["id"] for token in tokenizer_data.get("added_tokens", []) if token.get("special")}
    names = {tokenizer_data["model"].get("unk_token")}
    try:
        special_map = json.loads((folder / SPECIAL_TOKENS_MAP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        special_map = {}
    for value in special_map.values():
        for item in value if isinstance(value, list) else [value]:
            names.add(item.get("content") if isinstance(item, dict) else item)
    ids.update(vocab[name] for name in names if isinstance(name, str) and name in vocab)
    return ids


def select_kept_ids(
    vocab_size: int, counts: Counter[int], special: set[int], spec: PruneVocabSpec
) -> list[int]:
    """The sorted old ids to keep: special tokens, tokens used `min_count` times, then `reserve` more.

    The reserve goes first to training tokens that missed `min_count` (most frequent first), then to the
    lowest unused ids.
    """
    keep = set(special) | {token for token, n in counts.items() if n >= spec.min_count}
    rare = sorted((token for token in counts if token not in keep), key=lambda t: (-counts[t], t))
    unused = (token for token in range(vocab_size) if token not in keep and token not in counts)
    extra: list[int] = []
    for token in [*rare, *unused]:
        if len(extra) >= spec.reserve:
            break
        extra.append(token)
    return sorted(keep | set(extra))


# ----------------------------------------------------------------------------------------------------------
# Writing the pruned folder


def prune_model_folder(source: Path, target: Path, keep: list[int], tokenizer_data: dict[str, Any]) -> None:
    """Write the pruned model and its remapped tokenizer files from `source` into `target`.

    Raises:
        StageError: the model has no word-embedding matrix of the tokenizer's size.
    """
    target.mkdir(parents=True, exist_ok=True)
    old_to_new = {old: new for new, old in enumerate(keep)}
    model = prune_embeddings(source, keep, old_to_new)
    model.save_pretrained(target)
    for path in source.iterdir():
        # Everything else (tokenizer config, special token map, generation config) ships unchanged.
        if (
            path.is_file()
            and not (target / path.name).exists()
            and path.name not in (TOKENIZER_FILE, VOCAB_FILE)
        ):
            shutil.copy2(path, target / path.name)
    pruned = prune_tokenizer_json(tokenizer_data, old_to_new)
    write_json(target / TOKENIZER_FILE, pruned)
    id_to_token = {token_id: token for token, token_id in pruned["model"]["vocab"].items()}
    (target / VOCAB_FILE).write_text(
        "".join(f"{id_to_token[i]}\n" for i in range(len(id_to_token))), encoding="utf-8"
    )
    remap_tokenizer_config(target / TOKENIZER_CONFIG_FILE, old_to_new)


def prune_embeddings(source: Path, keep: list[int], old_to_new: dict[int, int]) -> Any:
    """The model from `source` with only the `keep` rows of its word embeddings (copied bit for bit)."""
    import torch

    from edgekd.models import load_classifier

    model = load_classifier(str(source)).eval()
    old = model.get_input_embeddings()
    if old.weight.shape[0] < len(old_to_new) or max(keep) >= old.weight.shape[0]:
        raise StageError(
            f"the tokenizer has ids up to {max(keep)} but the model's word embeddings have "
            f"{old.weight.shape[0]} rows"
        )
    pad_id = model.config.pad_token_id
    new_pad = old_to_new.get(pad_id) if isinstance(pad_id, int) else None
    new = torch.nn.Embedding(len(keep), old.weight.shape[1], padding_idx=new_pad)
    with torch.no_grad():
        new.weight.copy_(old.weight[torch.tensor(keep, dtype=torch.long)])
    model.set_input_embeddings(new)
    model.config.vocab_size = len(keep)
    if new_pad is not None:
        model.config.pad_token_id = new_pad
        embeddings = getattr(getattr(model, model.base_model_prefix, model), "embeddings", None)
        if embeddings is not None and hasattr(embeddings, "padding_idx"):
            embeddings.padding_idx = new_pad  # RoBERTa/MPNet-style position ids count from the pad id
    return model


def prune_tokenizer_json(data: dict[str, Any], old_to_new: dict[int, int]) -> dict[str, Any]:
    """A copy of tokenizer.json with only the kept tokens, every id (vocab, added tokens, post-processor,
    padding) renumbered."""
    pruned = json.loads(json.dumps(data))
    vocab: dict[str, int] = data["model"]["vocab"]
    pruned["model"]["vocab"] = {
        token: old_to_new[i]
        for token, i in sorted(vocab.items(), key=lambda item: item[1])
        if i in old_to_new
    }
    pruned["added_tokens"] = [
        {**token, "id": old_to_new[token["id"]]}
        for token in data.get("added_tokens", [])
        if token["id"] in old_to_new
    ]
    pruned["post_processor"] = _remap_post_processor(pruned.get("post_processor"), pruned["model"]["vocab"])
    padding = pruned.get("padding")
    if isinstance(padding, dict) and padding.get("pad_id") in old_to_new:
        padding["pad_id"] = old_to_new[padding["pad_id"]]
    return pruned


def _remap_post_processor(node: Any, vocab: dict[str, int]) -> Any:
    """Renumber the special-token ids inside a post-processor (Template, Bert, Roberta or a Sequence)."""
    if isinstance(node, list):
        return [_remap_post_processor(item, vocab) for item in node]
    if not isinstance(node, dict):
        return node
    remapped = {key: _remap_post_processor(value, vocab) for key, value in node.items()}
    tokens = remapped.get("tokens")
    if isinstance(tokens, list) and isinstance(remapped.get("ids"), list):
        remapped["ids"] = [vocab[token] for token in tokens]  # TemplateProcessing special_tokens entries
    for key in ("cls", "sep"):  # BertProcessing / RobertaProcessing: [token, id]
        pair = remapped.get(key)
        if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str):
            remapped[key] = [pair[0], vocab[pair[0]]]
    return remapped


def remap_tokenizer_config(path: Path, old_to_new: dict[int, int]) -> None:
    """Renumber tokenizer_config.json's `added_tokens_decoder` (keyed by id) when the file has one."""
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        config["added_tokens_decoder"] = {
            str(old_to_new[int(i)]): token for i, token in decoder.items() if int(i) in old_to_new
        }
        write_json(path, config)


# ----------------------------------------------------------------------------------------------------------
# Measuring


def size_metrics(source: Path, target: Path, vocab_before: int, vocab_after: int) -> dict[str, Any]:
    """Vocabulary sizes and the bytes of weights plus tokenizer files before and after."""
    from edgekd.artifact import folder_size

    before, after = folder_size(source, onnx=False), folder_size(target, onnx=False)
    return {
        "vocab_before": vocab_before,
        "vocab_after": vocab_after,
        "bytes_before": before,
        "bytes_after": after,
        "bytes_saved": before - after,
    }


def validation_metrics(
    source: Path, target: Path, texts: list[str], labels: list[int], recipe: Recipe
) -> dict[str, Any]:
    """Validation accuracy of the model before and after pruning, and how many tokens became [UNK]."""
    accuracy_before, _ = pytorch_accuracy(source, texts, labels, recipe.data.max_length)
    accuracy_after, unk_share = pytorch_accuracy(target, texts, labels, recipe.data.max_length)
    return {
        "validation_samples": len(texts),
        "validation_accuracy_before": accuracy_before,
        "validation_accuracy_after": accuracy_after,
        "validation_unk_token_share_after": unk_share,
        # Texts whose tokens were not all kept: re-split into kept pieces or [UNK]; the others are unchanged.
        "validation_texts_retokenized_share": retokenized_share(source, target, texts),
    }


def retokenized_share(source: Path, target: Path, texts: list[str]) -> float:
    """Share of texts whose token sequence differs after pruning (compared as token strings)."""
    from tokenizers import Tokenizer

    before = Tokenizer.from_file(str(source / TOKENIZER_FILE)).encode_batch(texts)
    after = Tokenizer.from_file(str(target / TOKENIZER_FILE)).encode_batch(texts)
    changed = sum(1 for old, new in zip(before, after, strict=True) if old.tokens != new.tokens)
    return changed / max(len(texts), 1)


def pytorch_accuracy(
    folder: Path, texts: list[str], labels: list[int], max_length: int
) -> tuple[float, float]:
    """(accuracy, share of non-special tokens that are [UNK]) of the PyTorch model in `folder`."""
    import torch

    from edgekd.models import load_classifier, load_tokenizer

    tokenizer = load_tokenizer(str(folder))
    model = load_classifier(str(folder)).float().eval()
    correct, unk, tokens = 0, 0, 0
    for start in range(0, len(texts), EVAL_BATCH_SIZE):
        encoded = tokenizer(
            texts[start : start + EVAL_BATCH_SIZE],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        with torch.inference_mode():
            predicted = model(**encoded).logits.argmax(-1)
        correct += int((predicted == torch.tensor(labels[start : start + EVAL_BATCH_SIZE])).sum())
        ids = encoded["input_ids"][encoded["attention_mask"].bool()]
        unk += int((ids == tokenizer.unk_token_id).sum())
        tokens += int(ids.numel()) - 2 * len(predicted)  # [CLS] and [SEP] of each text
    return correct / max(len(texts), 1), unk / max(tokens, 1)
