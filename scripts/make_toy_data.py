"""Generate the tiny synthetic topic dataset used by recipes/smoke.yaml and the tests.

The texts are made from templates with a fixed seed, so the committed files can be re-made byte for byte:
    python scripts/make_toy_data.py recipes/data/toy_topics
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

TOPICS = {
    "sports": (
        ["the team", "our striker", "the coach", "the keeper", "the home side", "the champion"],
        [
            "won the match",
            "scored twice",
            "lost the final",
            "signed a new deal",
            "missed a penalty",
            "led the league",
        ],
        ["after extra time", "in the derby", "at the stadium", "in the last minute", "before the playoffs"],
    ),
    "weather": (
        ["heavy rain", "a cold front", "the storm", "strong wind", "thick fog", "a heat wave"],
        [
            "is expected",
            "hit the coast",
            "moved north",
            "closed the roads",
            "brought snow",
            "cooled the city",
        ],
        ["this weekend", "overnight", "near the mountains", "by tomorrow morning", "across the valley"],
    ),
    "tech": (
        [
            "the startup",
            "a new chip",
            "the software update",
            "the phone maker",
            "the cloud service",
            "an app",
        ],
        [
            "launched a product",
            "fixed a security bug",
            "doubled its speed",
            "crashed again",
            "raised funding",
        ],
        ["for developers", "in the browser", "on every laptop", "after the outage", "with better batteries"],
    ),
    "food": (
        ["the chef", "a small bakery", "the restaurant", "our kitchen", "the market", "a street vendor"],
        [
            "baked fresh bread",
            "served spicy noodles",
            "grilled the fish",
            "made a sweet cake",
            "sold ripe fruit",
        ],
        [
            "with garlic and lemon",
            "for the dinner crowd",
            "every sunday",
            "in a clay oven",
            "with fresh herbs",
        ],
    ),
}
SIZES = {"train": 480, "validation": 96, "test": 160}


def make_rows(n: int, rng: random.Random) -> list[dict[str, str]]:
    rows = []
    labels = sorted(TOPICS)
    for i in range(n):
        label = labels[i % len(labels)]
        subjects, verbs, tails = TOPICS[label]
        text = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(tails)}"
        if rng.random() < 0.3:  # a little noise from another topic keeps the task from being trivial
            other = TOPICS[rng.choice(labels)]
            text += f" while {rng.choice(other[0])} {rng.choice(other[1])}"
        rows.append({"text": text, "label": label})
    rng.shuffle(rows)
    return rows


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1234)
    for split, n in SIZES.items():
        lines = [json.dumps(r) for r in make_rows(n, rng)]
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "labels.txt").write_text("\n".join(sorted(TOPICS)) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "recipes/data/toy_topics"))
