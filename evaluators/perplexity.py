"""Perplexity on a local text file: a cheap objective for smoke studies and a guard.

Lower is better.

The file is a ``.txt`` (one text per non-empty line) or a ``.jsonl`` (a ``text`` field per
line). Texts are tokenized once, cut into windows of the model's context length and batched
once; each call runs the forward passes only. ``EvalSpec.limit`` caps the number of texts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluators.base import Evaluator, Scores
from evaluators.spec import EvalSpec, ObjectiveSpec
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
    """Token-level perplexity, ``exp(mean negative log-likelihood)``, one value per objective.

    Scores keys: ``"<file name>/perplexity"``.
    """

    def __init__(
        self, objectives: Sequence[ObjectiveSpec], spec: EvalSpec, model: Any, tokenizer: Any
    ) -> None:
        import torch

        self._batches: dict[str, list[tuple[Any, Any]]] = {}
        self._keys: dict[str, str] = {}
        self._texts: dict[str, int] = {}  # data file name -> texts scored
        window = context_length(model)
        device = next(model.parameters()).device
        for obj in objectives:
            if obj.data is None:
                raise UserError(f"objective {obj.name!r}: perplexity objectives need 'data'")
            texts = read_texts(Path(obj.data), f"objective {obj.name!r}")[: spec.limit]
            windows = [w for t in texts for w in token_windows(tokenizer(t)["input_ids"], window)]
            if not windows:
                raise UserError(f"objective {obj.name!r}: {obj.data} has no text of 2+ tokens")
            windows.sort(key=len)
            batches = []
            for i in range(0, len(windows), spec.batch_size):
                chunk = windows[i : i + spec.batch_size]
                width = max(map(len, chunk))
                ids = torch.zeros(len(chunk), width, dtype=torch.long)
                mask = torch.zeros(len(chunk), width, dtype=torch.long)
                for row, w in enumerate(chunk):
                    ids[row, : len(w)] = torch.tensor(w)
                    mask[row, : len(w)] = 1
                batches.append((ids.to(device), mask.to(device)))
            self._batches[obj.name] = batches
            self._keys[obj.name] = f"{Path(obj.data).name}/perplexity"
            self._texts[Path(obj.data).name] = len(texts)

    def examples_per_task(self) -> dict[str, int]:
        """Texts scored per data file (a text longer than the context is still one example)."""
        return dict(self._texts)

    def evaluate(self, model: Any, tokenizer: Any) -> Scores:
        tasks: dict[str, float] = {}
        objectives: dict[str, float] = {}
        for name, batches in self._batches.items():
            value = perplexity(model, batches)
            if math.isnan(value):
                raise UserError(f"objective {name!r}: perplexity of {self._keys[name]!r} is NaN")
            tasks[self._keys[name]] = objectives[name] = value
        return Scores(tasks=tasks, objectives=objectives)


def perplexity(model: Any, batches: Sequence[tuple[Any, Any]]) -> float:
    """``exp`` of the mean next-token negative log-likelihood over all unpadded positions."""
    import torch
    import torch.nn.functional as F

    nll, count = 0.0, 0
    with torch.no_grad():
        for ids, mask in batches:
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            nll += float(F.cross_entropy(logits.transpose(1, 2), target, reduction="sum"))
            count += int(mask[:, 1:].sum())
    if not count:
        return float("nan")
    return math.exp(min(nll / count, 700.0))  # capped: exp overflows a float past ~709
