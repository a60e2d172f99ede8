"""The demo pool's training runs: the base, then every fine-tune from it (in parallel).

Each run is single-process and seeded, so its tensors do not depend on which worker trains it
or on how many run at once: the fine-tunes are spread over ``Recipe.workers`` processes (two
on the demo's 2 cores), each with ``Recipe.threads`` torch threads.
"""

from __future__ import annotations

import json
import queue as queue_module
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from search.zoo.recipe import RECIPES, Recipe

Progress = Callable[[int, str], None]  # (steps done since the last call, run name)
_REPORT_EVERY = 10  # steps between progress messages from a worker process


def train_base(recipe: Recipe, seed: int, folder: Path, on_step: Progress) -> None:
    """Pretrain the base on the skill mixture and save it (model + tokenizer) in ``folder``.

    The base is a mid-pretraining checkpoint (no learning-rate decay) unless ``base_anneal``.
    """
    import torch
    from transformers import LlamaForCausalLM

    from search.zoo.model import llama_config
    from search.zoo.skills import eval_prompts
    from search.zoo.train import batches, mixture_texts, train

    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        llama_config(recipe.hidden, recipe.layers, recipe.heads, recipe.intermediate)
    )
    texts = mixture_texts(recipe.base_code_share, seed, eval_prompts())
    data = batches(texts, recipe.batch_size)
    train(
        model,
        data,
        recipe.base_steps,
        recipe.base_lr,
        warmup=0.1,
        anneal=recipe.base_anneal,
        on_step=lambda loss: on_step(1, "base"),
    )
    save(model, folder, {"name": "base", "steps": recipe.base_steps, "lr": recipe.base_lr})


def fine_tune(
    name: str, size: str, index: int, seed: int, base: Path, out: Path, progress: Any = None
) -> str:
    """Train run ``index`` of ``RECIPES[name][size]`` from the base folder; save each of its
    checkpoints (``Run.checkpoints``) to ``out / <folder name>``.

    Runs in a worker process as well as in the caller's: ``progress`` is a queue receiving
    ``(steps, name)`` (or ``None``).
    """
    import torch
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from search.zoo.skills import eval_prompts
    from search.zoo.train import batches, mixture_texts, train

    recipe = RECIPES[name][size]
    run = recipe.runs[index]
    if recipe.threads is not None:
        torch.set_num_threads(recipe.threads)
    model = LlamaForCausalLM(LlamaConfig.from_pretrained(base))
    model.load_state_dict(load_file(str(base / "model.safetensors")))
    run_seed = seed * 1000 + index + 1
    texts = mixture_texts(
        run.code_share, run_seed, eval_prompts(), run.fixed_examples, skill=run.skill
    )
    count = {"done": 0, "sent": 0}

    def step(loss: float) -> None:
        count["done"] += 1
        if progress is not None and (
            count["done"] % _REPORT_EVERY == 0 or count["done"] == run.steps
        ):
            progress.put((count["done"] - count["sent"], run.name))
            count["sent"] = count["done"]

    data = batches(texts, recipe.batch_size)
    folders = dict(run.checkpoints)

    def keep(at: int) -> None:
        save(model, out / folders[at], {**asdict(run), "step": at}, tokenizer_from=base)

    train(
        model,
        data,
        run.steps,
        run.lr,
        anneal=run.anneal,
        on_step=step,
        save_at=tuple(folders),
        on_checkpoint=keep,
    )
    return run.name


def fine_tune_all(
    name: str,
    size: str,
    seed: int,
    base: Path,
    out: Path,
    on_step: Progress,
    workers: int | None = None,
) -> None:
    """Every run of recipe ``name`` at ``size``, ``workers`` (default ``Recipe.workers``) at a
    time."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    recipe = RECIPES[name][size]
    workers = recipe.workers if workers is None else workers
    indices = range(len(recipe.runs))
    if workers <= 1:
        local: queue_module.SimpleQueue = queue_module.SimpleQueue()
        for i in indices:
            fine_tune(name, size, i, seed, base, out, local)
            while not local.empty():
                on_step(*local.get())
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        messages = manager.Queue()
        pending = {
            pool.submit(fine_tune, name, size, i, seed, base, out, messages) for i in indices
        }
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in finished:
                future.result()  # re-raise a worker's error here
            while not messages.empty():
                on_step(*messages.get())


def save(model: Any, folder: Path, run: dict[str, Any], tokenizer_from: Path | None = None) -> None:
    """A Hugging Face folder: safetensors, config, generation config, tokenizer, zoo_run.json."""
    from transformers import AutoTokenizer

    from search.zoo.model import char_tokenizer

    model.save_pretrained(folder)
    tokenizer = (
        AutoTokenizer.from_pretrained(tokenizer_from) if tokenizer_from else char_tokenizer()
    )
    tokenizer.save_pretrained(folder)
    (folder / "zoo_run.json").write_text(json.dumps(run, indent=2, sort_keys=True) + "\n")
