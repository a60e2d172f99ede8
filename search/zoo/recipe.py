"""What the demo pool is: model size, base pretraining and the fine-tuning runs, per size.

Like the recycled checkpoints of Khalifa et al., every fine-tune starts from one base: a
checkpoint taken in the middle of pretraining (no learning-rate decay) on a mix of both skills.
The runs differ in data mixture, learning rate and length: two specialists that finish (anneal)
on one skill alone and forget much of the other, two mixed runs taken mid-run at a high rate
(noisy, each weaker than its data would allow), a short run, a weak run and an over-trained one.
No checkpoint is best on both skills; a merge of the specialists with the mixed runs keeps most
of each specialist's skill and averages the mixed runs' noise away, so it scores above every
single checkpoint on the mean of the two skills, on the held-out splits too (the search has
something to find). A run trained to the end on a balanced mixture would beat those merges;
the pool has none, as recycled pools usually do not.

The full recipe was tuned on this machine's 2 cores: 800 base steps (both cores: it trains
alone) and 1,700 fine-tuning steps of a 0.9 M-parameter model, two runs at a time with one torch
thread each.
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
    base_anneal: bool = True  # False: the base is a mid-pretraining checkpoint (no decay)
    base_threads: int | None = None  # torch threads for the base, which trains alone
    threads: int | None = None  # torch threads per fine-tuning process (None: torch's default)
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


# Specialists finish their run (anneal) on one skill and forget much of the other; the mixed
# runs are checkpoints taken mid-run at a high rate, each carrying its own optimization noise
# that merging averages out.
_FULL_RUNS = (
    Run("code_specialist", 1.0, 400, 1e-3, anneal=True, note="code only, finished run"),
    Run("instruct_specialist", 0.0, 400, 1e-3, anneal=True, note="instructions only, finished run"),
    Run("mixed_code_heavy", 0.7, 300, 2e-3, note="70% code, mid-run at a high rate"),
    Run("mixed_instruct_heavy", 0.3, 300, 2e-3, note="70% instructions, mid-run at a high rate"),
    Run("mixed_short", 0.5, 100, 1e-3, note="balanced, a short run"),
    Run("weak", 0.5, 50, 4e-3, note="a short run at a too-high learning rate"),
    Run(
        "code_overtrained",
        1.0,
        150,
        3e-3,
        anneal=True,
        fixed_examples=512,
        note="512 code examples for ~9 epochs, finished run",
    ),
)

RECIPES: dict[str, Recipe] = {
    "full": Recipe(
        hidden=128,
        layers=4,
        heads=4,
        intermediate=384,
        batch_size=32,
        base_steps=800,
        base_lr=2e-3,
        runs=_FULL_RUNS,
        eval_limit=100,
        base_anneal=False,
        base_threads=2,  # 1.4x faster than one thread on these 2 cores; nothing else runs then
        threads=1,  # one thread per run: two runs fill the 2 cores, no slowdown when busy
        workers=2,  # two fine-tunes at a time on the demo's 2 cores
    ),
    # Same recipe, far smaller: builds in seconds for tests (scores are not meaningful).
    "tiny": Recipe(
        hidden=32,
        layers=2,
        heads=2,
        intermediate=64,
        batch_size=8,
        base_steps=12,
        base_lr=3e-3,
        eval_limit=8,
        base_anneal=False,
        threads=1,  # tensors this small gain nothing from a second thread, and lose a lot when busy
        runs=tuple(
            Run(
                r.name,
                r.code_share,
                max(2, r.steps // 50),
                r.lr,
                r.anneal,
                r.fixed_examples and 16,
                r.note,
            )
            for r in _FULL_RUNS
        ),
    ),
}
