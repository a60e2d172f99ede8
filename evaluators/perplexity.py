"""Perplexity on a local text file: a cheap objective for smoke studies and a guard.

Lower is better.

The file is a ``.txt`` (one text per non-empty line) or a ``.jsonl`` (a ``text`` field per
line). Texts are tokenized once, cut into windows of the model's context length
(``EvalSpec.max_length`` when set) and batched once; each call runs the forward passes only.
``EvalSpec.limit`` caps the number of texts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from evaluators.base import Evaluator, Layout, Scores
from evaluators.spec import EvalSpec, ObjectiveSpec
from evaluators.stats import ratio_stderr
from search.errors import UserError


def read_texts(path: Path, where: str) -> list[str]:
    """The texts of a ``.txt`` or ``.jsonl`` file; ``UserError`` when unreadable or empty."""
    if not path.is_file():
        raise UserError(f"{where}: data file {str(path)!r} does not exist")
    if path.suffix not in (".txt", ".jsonl"):
        raise UserError(f"{where}: data file {str(path)!r}: expected a .txt or .jsonl file")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix == ".txt":
        texts = lines
    else:
        texts = []
        for i, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{where}: {path}:{i}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise UserError(
                    f"{where}: {path}:{i}: expected an object with a string 'text' field"
                )
            texts.append(record["text"])
    if not texts:
        raise UserError(f"{where}: data file {str(path)!r} has no texts")
    return texts


def token_windows(ids: Sequence[int], window: int) -> list[list[int]]:
    """Split a token sequence into consecutive windows of at most ``window`` tokens (>= 2 each)."""
    windows = [list(ids[i : i + window]) for i in range(0, len(ids), window)]
    return [w for w in windows if len(w) >= 2]


def context_length(model: Any, default: int = 2048) -> int:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 1:
            return value
    return default


class PerplexityEvaluator(Evaluator):
    """Token-level perplexity, ``exp(total negative log-likelihood / tokens)``, per objective.

    Scores keys: ``"<file name>/perplexity"``; the file name is also the task name ``docs``
    and :meth:`examples_per_task` use (documents = texts, in file order).

    Per-example values: each text's own perplexity, ``exp(its NLL / its tokens)`` (the
    objective's reduction applied to that text alone, lower is better). Standard error: the
    objective is a ratio over texts, ``R = Σ NLL_i / Σ tokens_i``, so its SE is the ratio
    estimator's (:func:`evaluators.stats.ratio_stderr`), carried through ``exp`` by the delta
    method: ``SE = exp(R) · SE(R)``.
    """

    def __init__(
        self, objectives: Sequence[ObjectiveSpec], spec: EvalSpec, model: Any, tokenizer: Any
    ) -> None:
        self._windows: dict[str, list[tuple[int, list[int]]]] = {}
        self._batches: dict[str, list[Batch]] = {}
        self._keys: dict[str, str] = {}
        self._texts: dict[str, int] = {}
        self._batch_size = spec.batch_size
        self._device = next(model.parameters()).device
        window = spec.max_length or context_length(model)
        for obj in objectives:
            if obj.data is None:
                raise UserError(f"objective {obj.name!r}: perplexity objectives need 'data'")
            texts = read_texts(Path(obj.data), f"objective {obj.name!r}")[: spec.limit]
            windows = [
                (i, w)
                for i, t in enumerate(texts)
                for w in token_windows(tokenizer(t)["input_ids"], window)
            ]
            if not windows:
                raise UserError(f"objective {obj.name!r}: {obj.data} has no text of 2+ tokens")
            self._windows[obj.name] = windows
            self._batches[obj.name] = self._batch(windows)
            self._keys[obj.name] = f"{Path(obj.data).name}/perplexity"
            self._texts[obj.name] = len(texts)

    def _batch(self, windows: Sequence[tuple[int, list[int]]]) -> list[Batch]:
        """Windows sorted by length, padded into batches of ``batch_size`` (built once)."""
        ordered = sorted(windows, key=lambda iw: len(iw[1]))
        batches = []
        for i in range(0, len(ordered), self._batch_size):
            chunk = ordered[i : i + self._batch_size]
            width = max(len(w) for _, w in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, (_, w) in enumerate(chunk):
                ids[row, : len(w)] = torch.tensor(w)
                mask[row, : len(w)] = 1
            texts = tuple(t for t, _ in chunk)
            batches.append((ids.to(self._device), mask.to(self._device), texts))
        return batches

    def example_layout(self) -> Layout:
        """Refused: a perplexity is a ratio over the corpus, not a mean of per-text values."""
        names = ", ".join(repr(n) for n in self._keys)
        raise UserError(
            f"objective {names}: perplexity is exp(Σ NLL / Σ tokens) over the whole file, not a "
            "mean of per-text values, so scores of example subsets cannot be combined"
        )

    def examples_per_task(self) -> dict[str, int]:
        """File name -> number of texts scored."""
        return {self._keys[name].split("/")[0]: n for name, n in self._texts.items()}

    def evaluate(
        self, model: Any, tokenizer: Any, docs: Mapping[str, Sequence[int]] | None = None
    ) -> Scores:
        counts = self.examples_per_task()
        unknown = sorted(set(docs or {}) - set(counts))
        if unknown:
            raise ValueError(f"docs: {', '.join(unknown)} not scored here")
        scores = Scores()  # filled in below
        for name, batches in self._batches.items():
            key = self._keys[name]
            task = key.split("/")[0]
            texts = list(range(self._texts[name]))
            if docs is not None and task in docs:
                texts = sorted(set(docs[task]))
                if not texts or texts[0] < 0 or texts[-1] >= counts[task]:
                    raise ValueError(
                        f"docs[{task!r}]: expected indices in [0, {counts[task] - 1}], at least one"
                    )
                chosen = set(texts)
                batches = self._batch([(i, w) for i, w in self._windows[name] if i in chosen])
            nll, tokens = text_nll(model, batches, self._texts[name])
            pairs = [(nll[i], tokens[i]) for i in texts if tokens[i]]
            value = _exp(sum(a for a, _ in pairs) / sum(b for _, b in pairs))
            if math.isnan(value):
                raise UserError(f"objective {name!r}: perplexity of {key!r} is NaN")
            scores.tasks[key] = scores.objectives[name] = value
            scores.examples[key] = tuple(_exp(a / b) for a, b in pairs)
            se = value * ratio_stderr([a for a, _ in pairs], [b for _, b in pairs])
            scores.task_stderr[key] = scores.stderr[name] = se
        return scores


def _exp(x: float) -> float:
    return math.exp(min(x, 700.0))  # capped: exp overflows a float past ~709


# (token ids, attention mask, the text each row comes from)
Batch = tuple[Any, Any, tuple[int, ...]]


def text_nll(model: Any, batches: Sequence[Batch], n_texts: int) -> tuple[list[float], list[int]]:
    """Per text: the summed next-token negative log-likelihood and the number of tokens scored."""
    nll, count = [0.0] * n_texts, [0] * n_texts
    with torch.no_grad():
        for ids, mask, texts in batches:
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            losses = F.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(1)
            for text, loss, n in zip(
                texts, losses.tolist(), mask[:, 1:].sum(1).tolist(), strict=True
            ):
                nll[text] += loss
                count[text] += int(n)
    return nll, count


def perplexity(model: Any, batches: Sequence[Batch]) -> float:
    """``exp`` of the mean next-token negative log-likelihood over all unpadded positions."""
    n_texts = 1 + max((t for _, _, texts in batches for t in texts), default=-1)
    nll, count = text_nll(model, batches, n_texts)
    if not sum(count):
        return float("nan")
    return _exp(sum(nll) / sum(count))
