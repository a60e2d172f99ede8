"""``merge-search zoo build``: the demo pool, built locally and deterministically, cached.

Layout of ``OUT_DIR``: ``base/`` and one folder per fine-tuning run (Hugging Face Llama
folders: safetensors, config, tokenizer), ``tasks/`` (the demo task YAMLs and data, identical
to ``configs/tasks/demo``) and ``zoo.json`` (the manifest: recipe, seed, size, recipe key,
scores). A second build with the same recipe, seed and size finds the manifest and returns at
once. Recipes (:data:`~search.zoo.recipe.RECIPES`): ``recycle`` (the default, the demo's) and
``mixtures``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from search.errors import UserError
from search.zoo.recipe import DEFAULT_RECIPE, RECIPES, SIZES, Size

MANIFEST = "zoo.json"
SEARCH_TASKS = {"code": "demo_code", "instruct": "demo_instruct"}


@dataclass(frozen=True)
class ZooManifest:
    """What a build produced; ``scores[name] = {"code": .., "instruct": ..}`` (search splits)."""

    out_dir: Path
    seed: int
    size: str
    key: str
    base: Path
    checkpoints: tuple[Path, ...]
    tasks_path: Path
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    build_s: float = 0.0
    recipe: str = DEFAULT_RECIPE
    cached: bool = False

    def summary(self) -> str:
        """What ``merge-search zoo build`` prints: the score table, then built or up to date."""
        lines = [format_scores(self.scores)] if self.scores else []
        if self.cached:
            what = f"recipe {self.recipe}, seed {self.seed}, size {self.size}, key {self.key}"
            lines.insert(0, f"zoo: {self.out_dir} is up to date ({what})")
        else:
            lines.append(f"zoo: built {self.out_dir} in {self.build_s:.0f} s")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("cached")
        root = self.out_dir
        data.update(
            out_dir=None,
            base=self.base.relative_to(root).as_posix(),
            checkpoints=[p.relative_to(root).as_posix() for p in self.checkpoints],
            tasks_path=self.tasks_path.relative_to(root).as_posix(),
        )
        return data

    @classmethod
    def from_json(cls, out_dir: Path, data: dict[str, Any]) -> ZooManifest:
        return cls(
            out_dir=out_dir,
            seed=int(data["seed"]),
            size=str(data["size"]),
            key=str(data["key"]),
            base=out_dir / data["base"],
            checkpoints=tuple(out_dir / p for p in data["checkpoints"]),
            tasks_path=out_dir / data["tasks_path"],
            scores={k: dict(v) for k, v in data.get("scores", {}).items()},
            build_s=float(data.get("build_s", 0.0)),
            recipe=str(data.get("recipe", "mixtures")),
            cached=True,
        )


def build_zoo(
    out_dir: str | Path,
    seed: int = 0,
    size: Size = "full",
    progress: bool = True,
    score: bool = True,
    recipe: str = DEFAULT_RECIPE,
) -> ZooManifest:
    """Build (or find cached) the demo pool in ``out_dir``; prints nothing but the progress bar.

    Args:
        out_dir: target folder; an existing folder that is not a pool is refused (a pool of
            another recipe, seed or size is rebuilt in place).
        seed: seed of data order, initialization and training.
        size: ``"full"`` (the demo) or ``"tiny"`` (seconds; for tests).
        progress: show a progress bar while training (on standard error).
        score: score every checkpoint on both search tasks (the manifest's ``scores``).
        recipe: which pool (:data:`~search.zoo.recipe.RECIPES`): ``"recycle"`` or
            ``"mixtures"``.

    Returns:
        What was built, or found (``cached=True``): the folders, the scores, the build time;
        :meth:`ZooManifest.summary` is the text ``merge-search zoo build`` prints.

    Raises:
        UserError: unknown recipe or size, or ``out_dir`` exists and is not a demo pool.
    """
    if recipe not in RECIPES:
        raise UserError(f"zoo recipe {recipe!r}: expected one of {', '.join(RECIPES)}")
    if size not in SIZES:
        raise UserError(f"zoo size {size!r}: expected one of {', '.join(SIZES)}")
    name = recipe
    spec = RECIPES[name][size]
    out = Path(out_dir)
    key = spec.key(seed)
    cached = _cached(out, key)
    if cached is not None:
        return cached
    ours = out.is_dir() and (not any(out.iterdir()) or (out / MANIFEST).is_file())
    if out.exists() and not ours:
        raise UserError(
            f"zoo build: {str(out)!r} exists and is not a demo pool; pick another OUT_DIR"
        )

    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        with _torch_threads(spec.threads):
            scores = _build(tmp, name, size, seed, progress, score)
        manifest = ZooManifest(
            out_dir=out,
            seed=seed,
            size=size,
            key=key,
            base=out / "base",
            checkpoints=tuple(out / c for c in spec.checkpoint_names()),
            tasks_path=out / "tasks",
            scores=scores,
            build_s=round(time.perf_counter() - start, 1),
            recipe=name,
        )
        (tmp / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)  # an older pool of ours (its manifest was checked above)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch threads, restoring the previous count afterwards."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cached(out: Path, key: str) -> ZooManifest | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = ZooManifest.from_json(out, json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError):
        return None
    folders = (manifest.base, *manifest.checkpoints)
    if manifest.key != key or not all((p / "model.safetensors").is_file() for p in folders):
        return None
    return manifest


def _build(
    tmp: Path, name: str, size: str, seed: int, progress: bool, score: bool
) -> dict[str, dict[str, float]]:
    """Train the base and every run into ``tmp``; score each; return the scores."""
    from tqdm import tqdm

    from search.zoo.runs import fine_tune_all, train_base
    from search.zoo.skills import write_demo_tasks

    recipe = RECIPES[name][size]
    tasks_path = write_demo_tasks(tmp / "tasks")
    total = recipe.base_steps + sum(r.steps for r in recipe.runs)
    with tqdm(total=total, desc="zoo: base", unit="step", disable=not progress) as bar:

        def step(n: int, name: str) -> None:
            bar.set_description(f"zoo: {name}", refresh=False)
            bar.update(n)

        with _torch_threads(recipe.base_threads):
            train_base(recipe, seed, tmp / "base", step)
        fine_tune_all(name, size, seed, tmp / "base", tmp, step)
    if not score:
        return {}
    names = ["base", *recipe.checkpoint_names()]
    return score_folders([tmp / n for n in names], tasks_path, recipe.eval_limit)


def score_folders(folders: list[Path], tasks_path: Path, limit: int) -> dict[str, dict[str, float]]:
    """Each folder's score on both search tasks, its weights loaded in place into one model."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from evaluators.lm_eval_evaluator import LmEvalEvaluator
    from evaluators.spec import EvalSpec, ObjectiveSpec, TaskRef

    model = LlamaForCausalLM(LlamaConfig.from_pretrained(folders[0])).eval()
    tokenizer = AutoTokenizer.from_pretrained(folders[0])
    objectives = [ObjectiveSpec(name=s, tasks=(TaskRef(task=t),)) for s, t in SEARCH_TASKS.items()]
    spec = EvalSpec(tasks_path=tasks_path, limit=limit, batch_size=max(8, limit))
    evaluator = LmEvalEvaluator(objectives, spec, model, tokenizer)
    scores = {}
    for folder in folders:
        with torch.no_grad():
            model.load_state_dict(load_file(str(folder / "model.safetensors")))
        scores[folder.name] = evaluator.evaluate(model, tokenizer).objectives
    return scores


def format_scores(scores: dict[str, dict[str, float]]) -> str:
    """The score table: one row per checkpoint, exact match on both search tasks and the mean."""
    lines = [f"{'checkpoint':<24}{'code':>8}{'instruct':>10}{'mean':>8}"]
    for name, s in scores.items():
        mean = (s["code"] + s["instruct"]) / 2
        lines.append(f"{name:<24}{s['code']:>8.3f}{s['instruct']:>10.3f}{mean:>8.3f}")
    return "\n".join(lines)
