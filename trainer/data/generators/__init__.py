"""Generators of realistic data sets in the real files' formats, each with a
planted structure a model can learn beyond popularity (taste clusters, a Zipf
popularity skew) and its shape's quirks:

* ``yelp``: Yelp reviews in JSON lines, stars skewed to 4-5, trained on 4 and up;
* ``recipes``: Food.com ratings (0 = reviewed without a rating) and the recipes
  catalogue, tags and ingredients as Python list literals;
* ``retailrocket``: RetailRocket's e-commerce events, a view-heavy funnel;
* ``tools``: tool-usage logs, the next tool following a Markov chain.

``generate(shape, out)`` writes the files into ``out`` and returns a
``GeneratedData``: its ``train_args`` are the ``recsys-train`` flags that load
them. ``python -m trainer.data.generators SHAPE --out DIR`` does the same and
prints the command. Fully vectorized numpy and seeded: the same config writes
the same files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, NamedTuple

from trainer.data.generators import recipes, retailrocket, tools, yelp
from trainer.data.generators.common import GeneratedData, GeneratorConfig, TasteSpec


class Shape(NamedTuple):
    """A data shape: its config type (defaults: ~100k interactions) and its generator."""

    config: type[GeneratorConfig]
    generate: Callable[..., GeneratedData]


SHAPES: dict[str, Shape] = {
    "yelp": Shape(yelp.YelpConfig, yelp.generate),
    "recipes": Shape(recipes.RecipesConfig, recipes.generate),
    "retailrocket": Shape(retailrocket.RetailRocketConfig, retailrocket.generate),
    "tools": Shape(tools.ToolsConfig, tools.generate),
}


def generate(shape: str, out: Path | str, config: GeneratorConfig | None = None, **changes) -> GeneratedData:
    """Writes data set ``shape`` (one of ``SHAPES``) into the folder ``out`` (made
    if missing). ``config`` defaults to the shape's; ``changes`` replace fields of
    it (``seed=1``, ``interactions=20_000``)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    kind = SHAPES[shape]
    config = dataclasses.replace(config or kind.config(), **changes)
    if not isinstance(config, kind.config):
        raise TypeError(f"shape {shape!r} takes a {kind.config.__name__}, got {type(config).__name__}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return kind.generate(config, out)


__all__ = ["SHAPES", "GeneratedData", "GeneratorConfig", "Shape", "TasteSpec", "generate"]
