"""The demo pool's two synthetic skills, as deterministic generators of (prompt, answer) pairs.

* ``code``: trace a tiny Python-like program to what it prints, e.g.
  ``a=4;b=a+3;a=b-a;print(a)?`` -> ``4``.
* ``instruct``: apply a stated instruction to a word, e.g. ``reverse: stone?`` -> ``enots``.

Prompts end with ``?`` and answers never contain a newline, so one lm-eval ``generate_until``
task per split (stop at ``"\\n"``, exact match) scores either skill. Everything here is plain
Python seeded with :class:`random.Random`, so a seed always gives the same examples: the
committed task data under ``configs/tasks/demo/`` can be checked against a regeneration.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

SKILLS = ("code", "instruct")
# task-name suffix -> generator stream; training uses stream 0. The search split is what a study
# maximizes over, the held-out split what `export --knee` chooses on, the test split what
# neither saw: the verdict (the chosen merge vs every input).
SPLITS = {"": 1, "_heldout": 2, "_test": 3}
# examples per task split: 200 keeps a demo trial cheap (~0.5 s); 1,000 makes the standard
# error of a paired difference on the mean of both skills about 1 point (the verdict's scale).
SPLIT_EXAMPLES = {"": 200, "_heldout": 1000, "_test": 1000}
MAX_ANSWER_CHARS = 10  # longest answer either skill produces (the tasks' max_gen_toks follows)

_VARS = "abc"
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def code_example(rng: random.Random) -> tuple[str, str]:
    """A 2-4 statement program over a, b, c with digit values, and what it prints.

    Statements assign a digit (``a=4``), copy a variable (``b=a``) or add/subtract 1-3
    (``c=b+2``); the printed variable is the last one assigned half of the time.
    """
    while True:
        env: dict[str, int] = {}
        stmts: list[str] = []
        for _ in range(rng.randint(2, 4)):
            var = rng.choice(_VARS)
            kind = "const" if not env else rng.choice(("const", "copy", "step", "step"))
            if kind == "const":
                value = rng.randint(0, 9)
                stmts.append(f"{var}={value}")
            else:
                src = rng.choice(sorted(env))
                value = env[src]
                if kind == "copy" and src != var:
                    stmts.append(f"{var}={src}")
                else:
                    step = rng.randint(1, 3)
                    op = rng.choice("+-")
                    value = value + step if op == "+" else value - step
                    stmts.append(f"{var}={src}{op}{step}")
            env[var] = value
        if all(0 <= v <= 9 for v in env.values()):
            out = var if rng.random() < 0.5 else rng.choice(sorted(env))
            return ";".join(stmts) + f";print({out})?", str(env[out])


_INSTRUCTIONS: dict[str, Callable[[str], str]] = {
    "reverse": lambda w: w[::-1],
    "upper": str.upper,
    "sort": lambda w: "".join(sorted(w)),
    "repeat": lambda w: w + w,
    "first": lambda w: w[0],
    "last": lambda w: w[-1],
    "swap": lambda w: w[-1] + w[1:-1] + w[0],
}


def instruct_example(rng: random.Random) -> tuple[str, str]:
    """An instruction applied to a random 3-5 letter word."""
    name = rng.choice(sorted(_INSTRUCTIONS))
    word = "".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 5)))
    return f"{name}: {word}?", _INSTRUCTIONS[name](word)


def arith_example(rng: random.Random) -> tuple[str, str]:
    """Two-digit addition, e.g. ``37+45?`` -> ``82``: a skill neither search objective measures
    (the recycling pool's off-target run trains on it; it has no evaluation split)."""
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"{a}+{b}?", str(a + b)


GENERATORS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "code": code_example,
    "instruct": instruct_example,
    "arith": arith_example,  # training only (not in SKILLS: no evaluation split)
}


def _stream(skill: str, seed: int, stream: int) -> random.Random:
    return random.Random(f"{skill}:{seed}:{stream}")


def eval_split(skill: str, split: str, seed: int = 0) -> list[dict[str, str]]:
    """The distinct examples of one evaluation split (``""`` search, ``"_heldout"``, ``"_test"``;
    ``SPLIT_EXAMPLES[split]`` of them).

    Each split excludes every prompt of the splits before it (in :data:`SPLITS` order).
    """
    earlier = list(SPLITS)[: list(SPLITS).index(split)]
    taken = {d["prompt"] for e in earlier for d in eval_split(skill, e, seed)}
    rng = _stream(skill, seed, SPLITS[split])
    docs: list[dict[str, str]] = []
    while len(docs) < SPLIT_EXAMPLES[split]:
        prompt, answer = GENERATORS[skill](rng)
        if prompt not in taken:
            taken.add(prompt)
            docs.append({"prompt": prompt, "answer": answer})
    return docs


def eval_prompts(seed: int = 0) -> set[str]:
    """Every prompt of every evaluation split: training never sees these."""
    return {d["prompt"] for s in SKILLS for split in SPLITS for d in eval_split(s, split, seed)}


def training_stream(skill: str, seed: int, exclude: set[str]) -> Iterator[str]:
    """Endless training texts ``prompt + answer + "\\n"`` of one skill, never an eval prompt."""
    rng = _stream(skill, seed, 0)
    while True:
        prompt, answer = GENERATORS[skill](rng)
        if prompt not in exclude:
            yield prompt + answer + "\n"


def task_name(skill: str, split: str) -> str:
    return f"demo_{skill}{split}"


def task_yaml(skill: str, split: str) -> str:
    """The lm-eval task YAML of one split; its data file sits beside it."""
    name = task_name(skill, split)
    return f"""\
# Demo task generated by `search.zoo.skills.write_demo_tasks` (skill {skill!r}).
# The data file path is relative to this YAML's folder (merge-search resolves it there).
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {name}.jsonl
test_split: test
output_type: generate_until
doc_to_text: prompt  # field names, not Jinja templates: no template compiled per example
doc_to_target: answer
target_delimiter: ""
generation_kwargs:
  until: ["\\n"]
  do_sample: false
  max_gen_toks: {MAX_ANSWER_CHARS + 2}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
num_fewshot: 0
metadata:
  version: 1.0
"""


SIGNAL_MODULE = "gold_answer"  # the Python file beside the YAMLs that lm-eval's !function loads

# lm-eval's ``process_results`` for the signal tasks: the summed log-probability of the gold
# answer and its closing newline given the prompt (loglikelihood requests return
# ``(log-probability, is_greedy)`` per document).
_SIGNAL_CODE = '''\
"""Per-example results of the demo's signal tasks (written by `search.zoo.skills`)."""


def log_probability(doc, results):
    """The gold answer's log-probability under the model: higher is better."""
    logprob, _is_greedy = results[0]
    return {"gold_logprob": float(logprob)}
'''


def signal_yaml(skill: str) -> str:
    """The search split of ``skill`` scored by the gold answer's log-probability: the same
    examples as the exact-match task, a continuous per-example value instead of 0/1 (one
    forward pass, no generation). An objective searches on it when its ``signal`` names it
    (``configs/demo.yaml`` shows how; the demo itself searches on exact match)."""
    name = task_name(skill, "")
    return f"""\
# Demo signal task generated by `search.zoo.skills.write_demo_tasks` (skill {skill!r}): the
# examples of {name}, each scored by the log-probability of its gold answer (and the newline
# that ends it), a lower-variance measure of the skill than exact match.
task: {name}_signal
dataset_path: json
dataset_kwargs:
  data_files:
    test: {name}.jsonl
test_split: test
output_type: loglikelihood
doc_to_text: prompt
doc_to_target: "{{{{answer}}}}\\n"
target_delimiter: ""
process_results: !function {SIGNAL_MODULE}.log_probability
metric_list:
  - metric: gold_logprob
    aggregation: mean
    higher_is_better: true
num_fewshot: 0
metadata:
  version: 1.0
"""


def demo_task_files(seed: int = 0) -> dict[str, str]:
    """File name -> text of every demo task YAML and JSONL data file, the signal tasks of the
    search split and the module their results come from."""
    files: dict[str, str] = {}
    for skill in SKILLS:
        for split in SPLITS:
            name = task_name(skill, split)
            files[f"{name}.yaml"] = task_yaml(skill, split)
            files[f"{name}.jsonl"] = "".join(
                json.dumps(d, sort_keys=True) + "\n" for d in eval_split(skill, split, seed)
            )
        files[f"{task_name(skill, '')}_signal.yaml"] = signal_yaml(skill)
    files[f"{SIGNAL_MODULE}.py"] = _SIGNAL_CODE
    return files


def write_demo_tasks(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the demo task YAMLs and data (the committed copy lives in ``configs/tasks/demo``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in demo_task_files(seed).items():
        (out / name).write_text(text)
    return out
