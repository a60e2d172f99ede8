"""What the demo pool is: model size, base pretraining and the fine-tuning runs, per size.

Each fine-tune starts from the same base, like the recycled checkpoints of Khalifa et al.
(different data mixtures, learning rates, step counts), so the pool trades one skill for the
other and its merges behave like merges of real fine-tunes: soups of the runs that lean
towards either skill score above every single checkpoint on the mean of the two skills, while
the weak and the over-trained run drag a uniform soup down (the search has work to do).

The full recipe was tuned on this machine's 2 cores: about 2,300 optimizer steps of a
0.9 M-parameter model, one torch thread (the same tensors on any machine).
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
    anneal: bool = False  # False: a checkpoint taken mid-run, at the peak learning rate
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
    threads: int | None = None  # torch threads per training process (None: torch's default)
    workers: int = 1  # fine-tunes trained at once, one process each

    def key(self, seed: int) -> str:
        """Hash of the recipe, the seed and the code that turns them into weights (cache key)."""
        from importlib.metadata import version

        here = Path(__file__).parent
        sources = "".join(
            (here / f).read_text() for f in ("skills.py", "model.py", "train.py", "runs.py")
        )
        recipe = asdict(self)
        recipe.pop("workers")  # how many run at once does not change the tensors
        payload = json.dumps(
            {
                "recipe": recipe,
                "seed": seed,
                "sources": hashlib.sha256(sources.encode()).hexdigest(),
                "torch": version("torch"),
                "transformers": version("transformers"),
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# Most runs are checkpoints taken mid-run (no learning-rate decay, like the intermediate
# checkpoints Khalifa et al. recycle) at a modest rate: each gains on the skills it leans
# towards and carries its own optimization noise, which merging averages out.
_FULL_RUNS = (
    Run("code_specialist", 0.9, 250, 5e-4, note="90% code"),
    Run("instruct_specialist", 0.1, 250, 5e-4, note="90% instructions"),
    Run("mixed_code_heavy", 0.7, 250, 5e-4, note="70% code"),
    Run("mixed_instruct_heavy", 0.3, 250, 5e-4, note="70% instructions"),
    Run("mixed_short", 0.5, 100, 1e-3, note="balanced, a short run at a higher learning rate"),
    Run("weak", 0.5, 50, 4e-3, note="a short run at a too-high learning rate"),
    Run("code_overtrained", 1.0, 150, 3e-3, anneal=True, fixed_examples=512,
        note="512 code examples for ~9 epochs, finished run"),
)

RECIPES: dict[str, Recipe] = {
    "full": Recipe(
        hidden=128, layers=4, heads=4, intermediate=384, batch_size=32,
        base_steps=1000, base_lr=2e-3, runs=_FULL_RUNS, eval_limit=100,
        threads=1,  # one thread per run: the same tensors on any machine, no slowdown when busy
        workers=2,  # two fine-tunes at a time on the demo's 2 cores
    ),
    # Same recipe, far smaller: builds in seconds for tests (scores are not meaningful).
    "tiny": Recipe(
        hidden=32, layers=2, heads=2, intermediate=64, batch_size=8,
        base_steps=12, base_lr=3e-3, eval_limit=8,
        threads=1,  # tensors this small gain nothing from a second thread, and lose a lot when busy
        runs=tuple(
            Run(r.name, r.code_share, max(2, r.steps // 50), r.lr, r.anneal,
                r.fixed_examples and 16, r.note)
            for r in _FULL_RUNS
        ),
    ),
}
