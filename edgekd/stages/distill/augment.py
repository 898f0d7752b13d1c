"""An augmented transfer set (`distill.augment`): new texts made from the training split, for the teacher to
label (Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks"; TinyBERT's
task-specific data augmentation, with the teacher's own input embeddings in place of GloVe).

Each new text comes from one original row by one method:
- `mask`: about 15% of its words become the teacher tokenizer's mask token;
- `delete`: random word deletion (p 0.1), or n-gram sampling (a contiguous span of half to all-but-one words);
- `neighbours`: about 15% of its words become one of their nearest neighbours (cosine, top 8) among the whole
  words of the teacher's vocabulary, in its input-embedding space.

The student learns from these rows through the KD term only (label -100), exactly as from `distill.unlabeled`.
Output depends on the seed and the texts alone: every row draws from its own `random.Random` seeded with a
string (hashed with SHA-512 by `random`, so not subject to PYTHONHASHSEED), and nothing iterates a set.
Numpy only: the caller hands over the embedding matrix, so this module imports no torch.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

METHODS = ("mask", "delete", "neighbours")
MASK_SHARE = 0.15
DELETE_SHARE = 0.1
NGRAM_SHARE = 0.25  # Tang et al.'s p_ng: the share of `delete` rows made by n-gram sampling instead
REPLACE_SHARE = 0.15
NEIGHBOURS_K = 8
# A draw that repeats an existing text is retried with the same row's generator; after this many the row is
# given up (a one-word text has few variants), so `factor` is an upper bound.
ATTEMPTS = 4
# A word with punctuation stuck to it ("markets," or "(AP)") is replaced in its core only.
WORD = re.compile(r"^(\W*)(\w+)(\W*)$")
Neighbours = Mapping[str, Sequence[str]]


@dataclass
class AugmentedSet:
    """The new texts, each with the method that made it."""

    asked: list[str]
    texts: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Rows made by each method asked for (0 included)."""
        return {m: self.methods.count(m) for m in self.asked}


def normalised(text: str) -> str:
    """The text with its whitespace collapsed: two texts that differ only there are duplicates."""
    return " ".join(text.split())


def augment_texts(
    texts: Sequence[str],
    methods: Sequence[str],
    factor: int | Sequence[int],
    seed: int,
    mask_token: str,
    neighbours: Neighbours | None = None,
) -> AugmentedSet:
    """Up to `factor` new texts per original row, the methods taking turns; none repeats another or an original.

    Args:
        texts: The original (training) texts.
        methods: Names from METHODS, used in this order, row after row.
        factor: New rows per original row (fewer where a method cannot make a new text), or one such count per
            row (`class_factors`). A row's j-th variant is the same whatever the other rows' counts.
        seed: Same seed and texts, same output.
        mask_token: What `mask` writes in place of a word (the teacher tokenizer's mask token).
        neighbours: Word -> its nearest words, for `neighbours` (see `embedding_neighbours`).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"augmentation methods must be among {METHODS}, got {list(methods)}")
    factors = [factor] * len(texts) if isinstance(factor, int) else list(factor)
    if len(factors) != len(texts):
        raise ValueError(f"{len(factors)} factors for {len(texts)} texts")
    seen = {normalised(t) for t in texts}
    out = AugmentedSet(asked=list(methods))
    for i, (text, row_factor) in enumerate(zip(texts, factors, strict=True)):
        words = text.split()
        for j in range(row_factor):
            method = methods[(i * row_factor + j) % len(methods)]
            rng = random.Random(f"{seed}:{i}:{j}")
            new = first_new_variant(method, words, rng, seen, mask_token, neighbours or {})
            if new is not None:
                seen.add(new)
                out.texts.append(new)
                out.methods.append(method)
    return out


def first_new_variant(
    method: str,
    words: list[str],
    rng: random.Random,
    seen: set[str],
    mask_token: str,
    neighbours: Neighbours,
) -> str | None:
    """A variant of `words` not in `seen`, or None when ATTEMPTS draws all repeat (or the method cannot apply)."""
    for _ in range(ATTEMPTS):
        if method == "mask":
            variant = masked(words, rng, mask_token)
        elif method == "delete":
            variant = deleted(words, rng)
        else:
            variant = replaced(words, rng, neighbours)
        if variant is None:
            return None
        text = " ".join(variant)
        if text not in seen:
            return text
    return None


def chosen_positions(count: int, share: float, rng: random.Random) -> list[int]:
    """Each position with probability `share`, and at least one, so every variant differs from its source."""
    chosen = [k for k in range(count) if rng.random() < share]
    return chosen or [rng.randrange(count)]


def masked(words: list[str], rng: random.Random, mask_token: str) -> list[str] | None:
    if not words:
        return None
    chosen = set(chosen_positions(len(words), MASK_SHARE, rng))
    return [mask_token if k in chosen else w for k, w in enumerate(words)]


def deleted(words: list[str], rng: random.Random) -> list[str] | None:
    """Random deletion, or (NGRAM_SHARE of the time) a contiguous span of half to all-but-one of the words."""
    if len(words) < 2:
        return None  # deleting the only word leaves nothing to label
    if rng.random() < NGRAM_SHARE:
        n = rng.randint(math.ceil(len(words) / 2), len(words) - 1)
        start = rng.randint(0, len(words) - n)
        return words[start : start + n]
    gone = set(chosen_positions(len(words), DELETE_SHARE, rng))
    if len(gone) == len(words):
        gone.discard(rng.randrange(len(words)))
    return [w for k, w in enumerate(words) if k not in gone]


def replaced(words: list[str], rng: random.Random, neighbours: Neighbours) -> list[str] | None:
    """About REPLACE_SHARE of the words that have neighbours replaced by one of them."""
    slots = [k for k, w in enumerate(words) if word_neighbours(w, neighbours)]
    if not slots:
        return None
    chosen = chosen_positions(len(slots), REPLACE_SHARE, rng)
    out = list(words)
    for position in chosen:
        k = slots[position]
        out[k] = with_neighbour(words[k], rng, neighbours)
    return out


def lookup_keys(core: str) -> list[str]:
    """The vocabulary entries a word may match: itself, then lower-cased (uncased vocabularies)."""
    return [core] if core == core.lower() else [core, core.lower()]


def word_neighbours(word: str, neighbours: Neighbours) -> Sequence[str]:
    match = WORD.match(word)
    if match is None:
        return ()
    for key in lookup_keys(match.group(2)):
        if neighbours.get(key):
            return neighbours[key]
    return ()


def with_neighbour(word: str, rng: random.Random, neighbours: Neighbours) -> str:
    """`word` with its core replaced by a random neighbour, keeping its punctuation and a leading capital."""
    match = WORD.match(word)
    if match is None:
        return word
    lead, core, tail = match.groups()
    choice = rng.choice(list(word_neighbours(word, neighbours)))
    if core[0].isupper() and choice[0].islower():
        choice = choice[0].upper() + choice[1:]
    return lead + choice + tail


# ----------------------------------------------------------------------------------------------------------
# Nearest neighbours in the teacher's input-embedding space


def word_start_marker(vocab: Iterable[str]) -> str:
    """The prefix that starts a whole-word token: none for WordPiece vocabularies (whose pieces start with ##),
    "▁" for SentencePiece, "Ġ" for byte-level BPE."""
    tokens = list(vocab)
    if any(t.startswith("##") for t in tokens):
        return ""
    for marker in ("▁", "Ġ"):
        if sum(t.startswith(marker) for t in tokens) > len(tokens) // 10:
            return marker
    return ""


def whole_words(vocab: Mapping[str, int], special_tokens: Iterable[str]) -> dict[str, int]:
    """Word -> token id for the vocabulary's alphabetic whole-word tokens (no special tokens, no pieces)."""
    special = set(special_tokens)
    marker = word_start_marker(vocab)
    words: dict[str, int] = {}
    for token, index in sorted(vocab.items(), key=lambda item: item[1]):
        if token in special:
            continue
        if marker:
            if not token.startswith(marker):
                continue
            token = token[len(marker) :]
        elif token.startswith("##"):
            continue
        if token.isalpha() and token not in words:
            words[token] = index
    return words


def embedding_neighbours(
    embeddings: Any,
    vocab: Mapping[str, int],
    special_tokens: Iterable[str],
    texts: Iterable[str],
    k: int = NEIGHBOURS_K,
    chunk: int = 512,
) -> dict[str, list[str]]:
    """The k nearest whole words (cosine) of every vocabulary word that occurs in `texts`.

    Args:
        embeddings: The teacher's input-embedding matrix (vocabulary size x hidden), e.g.
            `model.get_input_embeddings().weight`, as a numpy array.
        vocab: Token -> id (`tokenizer.get_vocab()`).
        special_tokens: Tokens never offered as neighbours (`tokenizer.all_special_tokens`).
        texts: Where the words to look up come from (the training texts).
        k: Neighbours per word.
        chunk: Words compared at once (bounds the memory of the similarity block).
    """
    candidates = whole_words(vocab, special_tokens)
    wanted: dict[str, None] = {}
    for text in texts:
        for word in text.split():
            match = WORD.match(word)
            if match is not None:
                for key in lookup_keys(match.group(2)):
                    if key in candidates:
                        wanted[key] = None
    names = list(candidates)
    if not wanted or len(names) < 2:
        return {}
    matrix = np.asarray(embeddings, dtype=np.float32)[[candidates[w] for w in names]]
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    casing_ids: dict[str, int] = {}
    casing = np.array([casing_ids.setdefault(w.lower(), len(casing_ids)) for w in names])
    position = {w: i for i, w in enumerate(names)}
    queries = list(wanted)
    out: dict[str, list[str]] = {}
    take = min(k, len(names))
    for start in range(0, len(queries), chunk):
        rows = [position[q] for q in queries[start : start + chunk]]
        sims = matrix[rows] @ matrix.T
        # Not the word itself, nor its other casing in a cased vocabulary ("The" for "the").
        sims[casing[rows][:, None] == casing[None, :]] = -np.inf
        kth = np.partition(sims, len(names) - take, axis=1)[:, len(names) - take]
        for b, row in enumerate(rows):
            out[names[row]] = [names[c] for c in top_k(sims[b], kth[b], k)]
    return out


def top_k(similarities: Any, kth: float, k: int) -> list[int]:
    """Indices of the k largest finite values (all >= `kth`, the k-th largest), largest first, ties by index
    (so the result never depends on the partition's internals)."""
    picked = np.flatnonzero((similarities >= kth) & np.isfinite(similarities))
    ordered = sorted(picked.tolist(), key=lambda c: (-float(similarities[c]), c))
    return ordered[:k]
