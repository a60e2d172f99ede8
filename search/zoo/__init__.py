"""The demo pool: a small Llama base and fine-tuned checkpoints that trade two synthetic skills.

``build_zoo(out_dir, seed=0, size="full", recipe="recycle")`` builds it (cached); recipes
(:data:`RECIPES`): ``recycle`` (the demo's: twelve checkpoints of the kinds a team throws away)
and ``mixtures`` (eight checkpoints of three mixture runs); ``merge-search zoo build`` is
``search.commands.zoo``. The skills and their lm-eval tasks live in :mod:`search.zoo.skills`.
"""

from __future__ import annotations

from search.zoo.build import ZooManifest, build_zoo, format_scores
from search.zoo.recipe import RECIPES, Recipe, Run

__all__ = ["RECIPES", "Recipe", "Run", "ZooManifest", "build_zoo", "format_scores"]
