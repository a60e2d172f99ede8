"""What the demo pools are: model size, base pretraining and the fine-tuning runs, per recipe
(``mixtures``, ``recycle``: the three mixture runs below plus the kinds of checkpoint a team
throws away, see ``_RECYCLE_RUNS``) and size.

Like the recycled checkpoints of Khalifa et al., every fine-tune starts from one base: a
checkpoint taken in the middle of pretraining (no learning-rate decay) on a mix of both skills.
The runs differ in data mixture, data order and seed, and learning rate: a code-heavy run, an
instruction-heavy run and a balanced one, each at a high constant rate (no decay), and the pool
keeps several checkpoints of each run, taken along the way, as teams keep the intermediate
checkpoints of their runs. A checkpoint taken at a high rate carries its own optimization noise
and is weaker than its data would allow; no checkpoint is best on both skills. Averaging
checkpoints removes that noise (as averaging the iterates of one run approximates decaying its
rate, and as soups of fine-tunes from one base do), so merges score well above every single
checkpoint on the mean of the two skills, on the held-out and test splits too: the search has
something to find, whatever the floating point of the machine that built the pool. A run
trained to the end with a decayed rate on a balanced mixture would beat those merges; like most
recycled pools, this one has none.

The full recipe was sized on this machine's 2 cores: 800 base steps and 1,200 fine-tuning steps
of a 0.9 M-parameter model, one torch thread per process, two runs at a time (``recycle`` adds
260 steps: 2,260 in all, 349 CPU-seconds; see bench/recycle_pool.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

Size = Literal["full", "tiny"]
SIZES: tuple[Size, ...] = ("full", "tiny")


@dataclass(frozen=True)
class Run:
    """One fine-tuning run from the base."""

    name: str
    code_share: float  # fraction of code examples in its data (the rest: instruction following)
    steps: int
    lr: float
    anneal: bool = False  # False: a checkpoint taken mid-run, at the peak learning rate
    fixed_examples: int | None = None  # cycle over this many examples (over-training)
    save_at: tuple[int, ...] = ()  # steps whose checkpoints the pool keeps; (): the last one
    note: str = ""
    skill: str | None = None  # train on this skill only (search.zoo.skills.GENERATORS), not a mix

    @property
    def checkpoints(self) -> tuple[tuple[int, str], ...]:
        """``(step, folder name)`` of every checkpoint the run leaves in the pool: the run's
        name alone for its last step, ``<name>_<step>`` when it keeps several."""
        if not self.save_at:
            return ((self.steps, self.name),)
        return tuple((step, f"{self.name}_{step}") for step in self.save_at)


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

    def checkpoint_names(self) -> list[str]:
        """Folder names of the pool's checkpoints, run by run, in step order."""
        return [name for run in self.runs for _, name in run.checkpoints]

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


# Three runs from the base at a high constant rate, each leaving checkpoints along the way. The
# rates differ (code learns best at a lower one); each run has its own seed and data order.
_MIXTURE_RUNS = (
    Run("code_heavy", 0.95, 450, 2e-3, save_at=(150, 300, 450), note="95% code"),
    Run("instruct_heavy", 0.10, 450, 3e-3, save_at=(150, 300, 450), note="90% instructions"),
    Run("balanced", 0.5, 300, 2.5e-3, save_at=(150, 300), note="half code, half instructions"),
)

# What a team throws away (Khalifa et al.'s recycling setting): the three mixture runs above, kept
# at several stages (skill-heavy runs and a balanced one, each a decent merge ingredient), and
# what else lies around from the same base: an early checkpoint of the balanced run, a run on a
# skill neither search objective measures (addition), a run at a too-high learning rate and one
# over-trained on a small data set. The uniform soup averages the harmful ones in; a searched
# merge can leave them out. The mixture runs come first, so their checkpoints are the same
# tensors as the ``mixtures`` pool's (a run's seed follows its index).
_RECYCLE_RUNS = (
    *_MIXTURE_RUNS[:2],
    replace(_MIXTURE_RUNS[2], save_at=(20, 150, 300), note="half and half; step 20: early"),
    Run("arith", 0.0, 100, 3e-3, skill="arith", note="addition: neither objective measures it"),
    Run("too_hot", 0.5, 60, 2e-2, note="half and half at 8x the learning rate"),
    Run("overfit", 0.5, 100, 3e-3, fixed_examples=32, note="32 examples seen 100 times"),
)


def _tiny(runs: tuple[Run, ...]) -> tuple[Run, ...]:
    """The same runs with 1/50 of the steps (at least 2)."""
    return tuple(
        replace(
            r,
            steps=max(2, r.steps // 50),
            fixed_examples=r.fixed_examples and 16,
            save_at=tuple(sorted({max(1, s // 50) for s in r.save_at})),
        )
        for r in runs
    )


def _full(runs: tuple[Run, ...], base_steps: int = 800) -> Recipe:
    return Recipe(
        hidden=128,
        layers=4,
        heads=4,
        intermediate=384,
        batch_size=32,
        base_steps=base_steps,
        base_lr=2e-3,
        runs=runs,
        eval_limit=100,
        base_anneal=False,
        # One thread: two were 1.4x faster on 2 idle cores, but 15x slower (3 s a step) when
        # anything else ran on them, as torch's threads wait for each other.
        base_threads=1,
        threads=1,  # one thread per run: two runs fill the 2 cores, no slowdown when busy
        workers=2,  # two fine-tunes at a time on the demo's 2 cores
    )


def _small(runs: tuple[Run, ...]) -> Recipe:
    """Same recipe, far smaller: builds in seconds for tests (scores are not meaningful)."""
    return Recipe(
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
        runs=_tiny(runs),
    )


DEFAULT_RECIPE = "recycle"  # what `merge-search zoo build` and `make demo` use
# recipe name -> size -> Recipe. "mixtures": eight checkpoints of three runs, every one a decent
# mixture of both skills (their uniform soup is near the best merge); "recycle": twelve
# checkpoints, the kinds a team throws away (the uniform soup is far from the best merge).
RECIPES: dict[str, dict[str, Recipe]] = {
    "mixtures": {"full": _full(_MIXTURE_RUNS), "tiny": _small(_MIXTURE_RUNS)},
    "recycle": {"full": _full(_RECYCLE_RUNS), "tiny": _small(_RECYCLE_RUNS)},
}
