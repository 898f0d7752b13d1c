"""The stage contract: what a stage declares, what it is given and what it gives back.

A stage has a `name`, a `folder` in the run, the names of the stages it reads (`needs`), `params(recipe)` (what its
output depends on: part of its cache key), `preflight(recipe, splits)` (what it refuses before anything in the chain
trains), and `run(ctx, out_dir) -> StageResult`. It reads earlier stages' folders from `ctx.inputs` and their
records (stage.json) from `ctx.upstream`, and writes only into `out_dir`; `stages/runner.py` keys, caches and
swaps it into place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from edgekd.data import Splits
    from edgekd.recipe.schema import Recipe


@dataclass
class StageContext:
    """What a stage may read: the recipe, the run folder, the finished folders of the stages it needs, and the
    stage.json records of every stage that ran before it in this chain (in chain order)."""

    recipe: Recipe
    run_dir: Path
    inputs: dict[str, Path]
    log: Callable[[str], None] = print
    upstream: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class StageResult:
    """What a stage reports back; `metrics` lands in stage.json and can be read by later stages."""

    metrics: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


class Stage(Protocol):
    name: str
    folder: str
    needs: tuple[str, ...]
    # True: every torchrun process runs it (the training stages, DDP) and rank 0 writes; False: rank 0 alone.
    distributed: bool

    def params(self, recipe: Recipe) -> dict[str, Any]: ...

    def preflight(self, recipe: Recipe, splits: Splits) -> None: ...

    def run(self, ctx: StageContext, out_dir: Path) -> StageResult: ...


class StageBase:
    """Defaults for a stage: reads no earlier stage, runs on rank 0 alone, refuses nothing up front."""

    needs: tuple[str, ...] = ()
    distributed = False
    # True for the stage whose folder users ship (quantize): the runner keeps its stage.json beside the folder,
    # as `<run>/<folder>.stage.json`, so the folder holds the deployment alone.
    ships = False

    def preflight(self, recipe: Recipe, splits: Splits) -> None:
        """Nothing to check before the chain starts."""
