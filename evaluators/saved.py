"""Scoring a model saved on disk (``merge-search eval``): load it once, run its objectives."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer

from evaluators.base import Scores
from evaluators.builder import build_evaluator
from evaluators.spec import EvalSpec, ObjectiveSpec
from search.errors import UserError


def score_saved_model(
    model_dir: str | Path, objectives: Sequence[ObjectiveSpec], spec: EvalSpec, device: str
) -> Scores:
    """Load the Hugging Face folder ``model_dir`` on ``device`` and score ``objectives``.

    Raises:
        UserError: not a model folder, or it cannot be loaded; any evaluator's own check.
    """
    model, tokenizer = load_model(Path(model_dir), device, spec)
    return build_evaluator(objectives, spec, model, tokenizer).evaluate(model, tokenizer)


def load_model(model_dir: Path, device: str, spec: EvalSpec | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a folder, on ``device`` (a resolved torch device), eval mode.

    With ``spec``, the tokenizer's chat template is checked before the model is loaded.
    """

    if not (model_dir / "config.json").is_file():
        raise UserError(
            f"model_dir {str(model_dir)!r}: expected a Hugging Face model folder with config.json"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if spec is not None and spec.apply_chat_template:
            from evaluators.lm_eval_evaluator import check_chat_template

            check_chat_template(tokenizer, spec.apply_chat_template)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").to(device).eval()
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"model_dir {str(model_dir)!r}: cannot load it ({reason})") from None
    return model, tokenizer
