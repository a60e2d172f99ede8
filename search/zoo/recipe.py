"""What the demo pool is: model size, base pretraining and the fine-tuning runs, per size.

Each fine-tune starts from the same base, like the recycled checkpoints of Khalifa et al.
(different data mixtures, learning rates, step counts), so the pool trades one skill for the
other and its merges behave like merges of real fine-tunes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Size = Literal["full", "tiny"]


@dataclass(frozen=True)
class Run:
    """One fine-tuning run from the base."""

    name: str
    code_share: float  # fraction of code examples in its data (the rest: instruction following)
    steps: int
    lr: float
    fixed_examples: int | None = None  # cycle over this many examples (over-training)
    note: str = ""


@dataclass(frozen=True)
class Recipe:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    batch_size: int
    base_steps: int
    base_lr: float
    runs: tuple[Run, ...]
    eval_limit: int  # examples per task in the printed score table
    base_code_share: float = 0.5
    threads: int | None = None  # torch threads while building (None: torch's default)

    def key(self, seed: int) -> str:
        """Hash of the recipe, the seed and the code that turns them into weights (cache key)."""
        from importlib.metadata import version

        here = Path(__file__).parent
        sources = "".join((here / f).read_text() for f in ("skills.py", "model.py", "train.py"))
        payload = json.dumps(
            {
                "recipe": asdict(self),
                "seed": seed,
                "sources": hashlib.sha256(sources.encode()).hexdigest(),
                "torch": version("torch"),
                "transformers": version("transformers"),
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


_FULL_RUNS = (
    Run("code_specialist", 1.0, 300, 2e-3, note="code data only"),
    Run("instruct_specialist", 0.0, 300, 2e-3, note="instruction data only"),
    Run("mixed_code_heavy", 0.75, 200, 1e-3, note="75% code, lower learning rate"),
    Run("mixed_instruct_heavy", 0.25, 200, 1e-3, note="75% instructions, lower learning rate"),
    Run("mixed_short", 0.5, 100, 1e-3, note="balanced, a short run"),
    Run("weak", 0.5, 40, 3e-4, note="barely trained"),
    Run("code_overtrained", 1.0, 300, 4e-3, fixed_examples=512, note="512 code examples, many epochs"),
)

RECIPES: dict[str, Recipe] = {
    "full": Recipe(
        hidden=128, layers=4, heads=4, intermediate=384, batch_size=32,
        base_steps=800, base_lr=3e-3, runs=_FULL_RUNS, eval_limit=100,
    ),
    # Same recipe, far smaller: builds in seconds for tests (scores are not meaningful).
    "tiny": Recipe(
        hidden=32, layers=2, heads=2, intermediate=64, batch_size=8,
        base_steps=12, base_lr=3e-3, eval_limit=8,
        threads=1,  # tensors this small gain nothing from a second thread, and lose a lot when busy
        runs=tuple(
            Run(r.name, r.code_share, max(2, r.steps // 50), r.lr, r.fixed_examples and 16, r.note)
            for r in _FULL_RUNS
        ),
    ),
}
