"""Cache keys pinned for the committed recipes, and how to get back the recipe each key was taken of.

A teacher or student trained for hours under a key must still be found after a refactor, so tests hash the stage
params of every committed recipe and compare with these values. When a recipe later changes on purpose (a new
student shape, more epochs), the key rightly changes: `EARLIER` holds the `--set` overrides that give back the
recipe as it was when its key was pinned, so the check still guards the code rather than the recipe.
"""

from __future__ import annotations

# sha of DistillStage.params()["distill"] before `distill.augment` and `distill.labelling` existed.
DISTILL_KEYS = {
    "ag_news.yaml": "414ff4c847b911cb",
    "clinc150.yaml": "1d268a6130cfa487",
    "quickstart.yaml": "577631cb39d89182",
    "quickstart_intermediate.yaml": "53f9a5982c41f989",
    "smoke.yaml": "c2ef7e04b7bc441a",
}

# sha of DistillStage.params()["student"] before `student.prune` existed (the resolved model folder written
# relative to the repository, so the key does not depend on the checkout's path).
STUDENT_KEYS = {
    "ag_news.yaml": "1cf4cf9b06899ce5",
    "clinc150.yaml": "074cb35b598df1fe",
    "quickstart.yaml": "a61308159ab0ca71",
    "quickstart_intermediate.yaml": "a61308159ab0ca71",
    "smoke.yaml": "c5b63aff807844c5",
}

# Every stage key of the smoke recipe's chain (paths under the checkout written relative to it, so the values hold in
# any checkout), taken before the package was re-laid out into stages/, recipe/, report/, cli/ (issue 15).
SMOKE_CHAIN_KEYS = {
    "teacher": "4868f63856edc70d",
    "distill": "835aabaee2bee577",
    "export": "7ba20ef92bffa92a",
    "quantize": "16d03eb1a33d4f0e",
    "benchmark": "9fd2735fd32a58e1",
}

# Recipes changed since their keys were pinned: ag_news moved from one unpruned layer and 3 epochs to a pruned
# student trained for 5 epochs (two layers, then a `student.budget` from four layers down to two); clinc150's six
# layers were pruned to half their FFN neurons, then to the width a `student.budget` picks, and learn from a
# teacher-labelled augmented copy of the train split too (issue 17).
EARLIER = {
    "ag_news.yaml": ["student.budget=null", "student.layers=[3]", "student.prune=null", "distill.epochs=3"],
    "clinc150.yaml": [
        "student.budget=null",
        "student.init=pretrained",
        "student.prune=null",
        "distill.augment=null",
    ],
}


def earlier(name: str) -> list[str]:
    """The overrides that give back recipe `name` as its keys were pinned (none when it has not changed)."""
    return list(EARLIER.get(name, []))
