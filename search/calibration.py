"""Calibration examples: text the data-informed merges learn from (Fisher, Frank-Wolfe ...).

An example is a prompt and a target: the target's tokens are scored given the prompt (their
log-likelihood for a Fisher, their negative log-likelihood for a proxy loss).

- :func:`task_examples`: examples of an lm-eval task's evaluation split, read with the task's own
  objects: the prompt is lm-eval's zero-shot context (``fewshot_context``: description and
  ``doc_to_text``), the target ``target_delimiter`` + the gold continuation (``doc_to_target``;
  for multiple-choice tasks the gold choice of ``doc_to_choice``);
- :func:`read_examples`: a local file, ``.txt`` (one text per non-empty line) or ``.jsonl``
  (``{"text": ...}`` or ``{"prompt": ..., "target": ...}`` per line); a text is a target with an
  empty prompt, so every token is scored;
- :func:`objective_proxies`: every objective's proxy set, its tasks' examples (or its perplexity
  file's texts) with the tasks' weights; :func:`interleave` mixes them into one calibration set;
- :class:`Calibration`: the calibration examples of per-checkpoint statistics (a Fisher, a Gram
  matrix) with their digest, from a file (:func:`calibration_from_file`) or from a study's
  objectives (:func:`calibration_from_objectives`), as a study's :class:`CalibrationSection`
  asks (``data`` or ``tasks: from_objectives``, ``examples``, ``cache_dir``);
- :func:`tokenize` and :func:`batches`: token ids with Hugging Face ``labels`` (``-100`` where a
  position is not scored), padded into batches for :mod:`search.engine.likelihood`.

Dependencies: lm-eval (through :mod:`evaluators.lm_tasks`), torch for :func:`batches`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from evaluators.spec import EvalSpec, ObjectiveSpec
from search.errors import UserError

IGNORE = -100  # label of a position that is not scored


@dataclass(frozen=True)
class ProxyExample:
    """The target's tokens are scored given the prompt (an empty prompt: all of the text)."""

    prompt: str
    target: str

    def to_json(self) -> dict[str, str]:
        """The record :func:`read_examples` reads back as this example."""
        if not self.prompt:
            return {"text": self.target}
        return {"prompt": self.prompt, "target": self.target}


@dataclass(frozen=True)
class ProxyPart:
    """One task (or text file) of an objective: its examples and its weight in the objective."""

    label: str
    weight: float  # the task's weight divided by the sum of its objective's task weights
    examples: tuple[ProxyExample, ...]


@dataclass(frozen=True)
class ObjectiveProxy:
    """An objective's proxy set: ``L = Σ_parts weight · mean token NLL of the part``."""

    name: str
    parts: tuple[ProxyPart, ...]


# ----------------------------------------------------------------------------------- sources


def read_examples(path: Path, where: str) -> list[ProxyExample]:
    """The examples of a ``.txt`` or ``.jsonl`` file; ``UserError`` when unreadable or empty."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{where}: data file {str(path)!r} does not exist")
    if path.suffix not in (".txt", ".jsonl"):
        raise UserError(f"{where}: data file {str(path)!r}: expected a .txt or .jsonl file")
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: data file {str(path)!r} is unreadable ({exc})") from None
    examples = []
    for i, line in enumerate(lines, 1):
        if path.suffix == ".txt":
            examples.append(ProxyExample("", line))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: {path}:{i}: not valid JSON ({exc.msg})") from None
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            examples.append(ProxyExample("", record["text"]))
        elif (
            isinstance(record, dict)
            and isinstance(record.get("prompt"), str)
            and isinstance(record.get("target"), str)
        ):
            examples.append(ProxyExample(record["prompt"], record["target"]))
        else:
            raise UserError(
                f"{where}: {path}:{i}: expected an object with a string 'text' field "
                "(or string 'prompt' and 'target' fields)"
            )
    if not examples:
        raise UserError(f"{where}: data file {str(path)!r} has no examples")
    return examples


def task_examples(task: Any, n: int | None, seed: int) -> list[ProxyExample]:
    """Up to ``n`` examples of an lm-eval task's evaluation split (a seeded random subset).

    Args:
        task: a built ``lm_eval.api.task.Task`` (:func:`evaluators.lm_tasks.load_tasks`).
        n: how many (``None``: all), drawn with ``random.Random(seed)`` and kept in split order.
    """
    docs = list(task.eval_docs)
    picked = range(len(docs))
    if n is not None and n < len(docs):
        picked = sorted(random.Random(seed).sample(range(len(docs)), n))
    return [_task_example(task, docs[i]) for i in picked]


def _task_example(task: Any, doc: Any) -> ProxyExample:
    config = task.config
    delimiter = config.target_delimiter or ""
    kind = task.OUTPUT_TYPE
    if kind == "loglikelihood_rolling":
        return ProxyExample("", str(task.doc_to_target(doc)))
    context = task.fewshot_context(doc=doc, num_fewshot=0)
    gold = task.doc_to_target(doc)
    if kind == "multiple_choice":
        choices = task.doc_to_choice(doc)
        if getattr(task, "multiple_input", False):  # one context per choice, one continuation
            index = int(task.doc_to_text(doc))
            return ProxyExample(context[index], delimiter + str(gold))
        index = gold[0] if isinstance(gold, list) else gold
        if isinstance(index, str):
            index = choices.index(index) if index in choices else int(index)
        return ProxyExample(str(context), delimiter + str(choices[index]))
    if isinstance(gold, list):
        gold = gold[0]
    return ProxyExample(str(context), delimiter + str(gold))


def objective_proxies(
    objectives: Sequence[ObjectiveSpec], spec: EvalSpec, per_task: int, seed: int
) -> tuple[ObjectiveProxy, ...]:
    """Every objective's proxy set: up to ``per_task`` examples of each of its tasks.

    lm-eval objectives read their tasks (built once here, with ``spec.tasks_path``); perplexity
    objectives the first ``per_task`` texts of their data file.

    Raises:
        UserError: an unknown task, an unreadable or empty data file.
    """
    from evaluators.lm_tasks import load_tasks

    names = list(dict.fromkeys(t.task for o in objectives for t in o.tasks))
    where = {t.task: f"objective {o.name!r}" for o in objectives for t in o.tasks}
    examples: dict[str, tuple[ProxyExample, ...]] = {}
    if names:
        loaded = load_tasks(
            names, spec.tasks_path, where, confirm_run_unsafe_code=spec.confirm_run_unsafe_code
        )
        for name in names:  # a group or tag: its leaf tasks share the per-task count
            leaves = loaded.members[name]
            share = max(1, per_task // len(leaves))
            examples[name] = tuple(
                ex for leaf in leaves for ex in task_examples(loaded.tasks[leaf].task, share, seed)
            )
    out = []
    for obj in objectives:
        if obj.evaluator == "perplexity":
            texts = read_examples(Path(obj.data), f"objective {obj.name!r}")[:per_task]
            parts = (ProxyPart(Path(obj.data).name, 1.0, tuple(texts)),)
        else:
            total = sum(t.weight for t in obj.tasks)
            parts = tuple(ProxyPart(t.task, t.weight / total, examples[t.task]) for t in obj.tasks)
        for part in parts:
            if not part.examples:
                raise UserError(f"objective {obj.name!r}: {part.label} has no examples")
        out.append(ObjectiveProxy(obj.name, parts))
    return tuple(out)


def interleave(proxies: Sequence[ObjectiveProxy], n: int) -> list[ProxyExample]:
    """Up to ``n`` distinct examples taken in turn from every task (or file) of the proxies."""
    sources = list({p.label: p.examples for o in proxies for p in o.parts}.values())
    out: list[ProxyExample] = []
    seen: set[ProxyExample] = set()
    for i in range(max((len(s) for s in sources), default=0)):
        for source in sources:
            if i < len(source) and source[i] not in seen and len(out) < n:
                seen.add(source[i])
                out.append(source[i])
    return out


# ------------------------------------------------------------------------ calibration data


class CalibrationSection(BaseModel):
    """A study's calibration section (``merge.fisher``, ...): per-checkpoint statistics are
    computed on this data and cached on disk.

    Exactly one of ``data`` (a local file) and ``tasks: from_objectives`` (the prompts and gold
    targets of the objectives' search-split examples, the texts of perplexity objectives).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path | None = None  # .txt (one text per line) or .jsonl (text, or prompt + target)
    tasks: Literal["from_objectives"] | None = None
    # N, the examples per checkpoint: 256 as in FusionBench
    examples: int = Field(default=256, ge=1)
    # None: a folder beside the SQLite file of the study, else under studies/
    cache_dir: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> CalibrationSection:
        if (self.data is None) == (self.tasks is None):
            raise ValueError(
                "expected exactly one of data: FILE.txt|FILE.jsonl and tasks: from_objectives"
            )
        return self


@dataclass(frozen=True)
class CalibrationInfo:
    """What identifies calibration data: where it came from, N, the examples' digest."""

    data: str
    examples: int
    data_sha256: str


@dataclass(frozen=True)
class Calibration:
    """Calibration examples: where they came from, the examples, a digest."""

    label: str
    examples: tuple[ProxyExample, ...]
    sha256: str

    @classmethod
    def of(cls, label: str, examples: Sequence[ProxyExample], where: str) -> Calibration:
        if not examples:
            raise UserError(f"{where}: no calibration examples (expected at least one)")
        return cls(label, tuple(examples), examples_sha256(examples))

    @property
    def info(self) -> CalibrationInfo:
        return CalibrationInfo(self.label, len(self.examples), self.sha256)

    def describe(self) -> dict[str, Any]:
        """What a study records (and a resume compares) and the model card shows."""
        return dataclasses.asdict(self.info)


def calibration_from_file(path: Path, n: int, where: str) -> Calibration:
    """The first ``n`` examples of a ``.txt``/``.jsonl`` file (``UserError`` when bad)."""
    if n < 1:
        raise UserError(f"{where}: expected at least 1 example (got {n})")
    return Calibration.of(str(path), read_examples(Path(path), where)[:n], where)


def calibration_from_objectives(
    objectives: Sequence[ObjectiveSpec], spec: EvalSpec, n: int, seed: int, where: str
) -> Calibration:
    """``n`` examples interleaved from every objective's proxy set (:func:`objective_proxies`)."""
    proxies = objective_proxies(objectives, spec, n, seed)
    sources = list(dict.fromkeys(p.label for o in proxies for p in o.parts))
    label = f"tasks: from_objectives ({', '.join(sources)})"
    return Calibration.of(label, interleave(proxies, n), where)


def read_calibration(
    section: CalibrationSection,
    objectives: Sequence[ObjectiveSpec],
    spec: EvalSpec,
    seed: int,
    field: str,
) -> Calibration:
    """The calibration examples a study's ``section`` (at config path ``field``) asks for."""
    if section.data is not None:
        return calibration_from_file(section.data, section.examples, f"{field}.data")
    return calibration_from_objectives(objectives, spec, section.examples, seed, field)


def examples_sha256(examples: Sequence[ProxyExample]) -> str:
    """A digest of the examples' text (what a cache of results computed from them is keyed by)."""
    payload = json.dumps([[e.prompt, e.target] for e in examples], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


# --------------------------------------------------------------------------------- tokens


def tokenize(
    examples: Sequence[ProxyExample], tokenizer: Any, max_length: int
) -> list[tuple[list[int], list[int]]]:
    """``(input ids, labels)`` per example: labels are the ids of the target, -100 elsewhere.

    As lm-eval encodes a context and continuation: the whole text is encoded and split after
    the prompt's tokens (trailing spaces of the prompt go with the target), so a tokenizer that
    merges across the boundary still sees the text it would see in evaluation. Examples longer
    than ``max_length`` keep their last ``max_length`` tokens. Examples whose target has no
    token are left out.
    """
    out = []
    for ex in examples:
        prompt, target = ex.prompt, ex.target
        spaces = len(prompt) - len(prompt.rstrip())
        if spaces:
            prompt, target = prompt[:-spaces], prompt[-spaces:] + target
        whole = list(tokenizer(prompt + target)["input_ids"])
        context = list(tokenizer(prompt)["input_ids"])
        if whole[: len(context)] != context:
            whole = context + list(tokenizer(target, add_special_tokens=False)["input_ids"])
        labels = [IGNORE] * len(context) + whole[len(context) :]
        ids, labels = whole[-max_length:], labels[-max_length:]
        if any(label != IGNORE for label in labels[1:]):
            out.append((ids, labels))
    return out


def batches(
    tokenized: Sequence[tuple[list[int], list[int]]],
    batch_size: int,
    pad_id: int,
    device: Any = "cpu",
) -> list[tuple[Any, Any, Any]]:
    """Right-padded ``(input_ids, attention_mask, labels)`` batches (sorted by length)."""
    import torch

    order = sorted(tokenized, key=lambda pair: len(pair[0]))
    out = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        for row, (i, lab) in enumerate(chunk):
            ids[row, : len(i)] = torch.tensor(i)
            mask[row, : len(i)] = 1
            labels[row, : len(lab)] = torch.tensor(lab)
        out.append((ids.to(device), mask.to(device), labels.to(device)))
    return out
