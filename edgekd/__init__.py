"""edgekd: distil, quantize and export transformer text classifiers, with a sign-off benchmark."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgekd._version import __version__

if TYPE_CHECKING:
    from edgekd.recipe.schema import Recipe

__all__ = ["__version__", "compress", "validate"]


def compress(recipe: str, overrides: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run a recipe end to end; see `edgekd.pipeline.compress`. Imported lazily: the runtime needs no torch."""
    from edgekd.pipeline import compress as _compress

    return _compress(recipe, overrides=overrides, **kwargs)


def validate(recipe: str, overrides: list[str] | None = None) -> Recipe:
    """Load and check a recipe without running anything."""
    from edgekd.recipe.load import load_recipe

    return load_recipe(recipe, overrides)
