"""The pool's resident model and tokenizer, built once and overwritten in place per trial."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.errors import UserError

if TYPE_CHECKING:
    from search.engine.pool import CheckpointPool

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def tokenizer_path(pool: CheckpointPool) -> Path | None:
    """Folder the tokenizer comes from: the base if it has tokenizer files, else the first."""
    for folder in (pool.base_path, pool.paths[0]):
        if folder is not None and any((folder / f).is_file() for f in TOKENIZER_FILES):
            return folder
    return None


def load_model(pool: CheckpointPool, *, tokenizer: bool = True) -> tuple[Any, Any]:
    """One resident ``AutoModelForCausalLM`` (the pool reference's weights) and its tokenizer.

    The model is on the pool's ``device`` in its ``dtype``, in eval mode;
    :func:`search.engine.materialize.materialize` overwrites its weights in place for every
    trial. The tokenizer comes from :func:`tokenizer_path`; ``tokenizer=False`` skips it
    (``None``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = None
    if tokenizer:
        tok_path = tokenizer_path(pool)
        if tok_path is None:
            raise UserError(
                f"{pool.reference_path}: no tokenizer files in the base or the first checkpoint"
            )
        tok = AutoTokenizer.from_pretrained(str(tok_path))
    model = AutoModelForCausalLM.from_pretrained(str(pool.reference_path), dtype=pool.dtype)
    model.to(pool.device).eval()
    return model, tok
