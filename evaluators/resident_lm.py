"""``ResidentHFLM``: lm-eval's ``HFLM`` for a model whose weights change in place between calls.

Each trial of a study asks the same requests of the same tokenizer; only the weights differ.
``HFLM`` tokenizes every context again on every call: once per request for its length-sorted
batching, once more per batch for the padded input. Here both are memoized: token ids depend
on the text and the tokenizer alone, never on the weights, so the scores are those of a plain
``HFLM`` (tests compare them). Everything that depends on the weights (forward passes,
generation, decoding the outputs) runs on every call.

Imports ``lm_eval`` at module level: import this module lazily (the CLI's start-up stays fast).
"""

from __future__ import annotations

from typing import Any

from lm_eval.models.huggingface import HFLM

# Memo bound (entries): far above the demo's 400 contexts, and a few hundred MB at most for
# large loglikelihood suites; past it new texts are tokenized as usual, not stored.
MAX_MEMO = 200_000


class ResidentHFLM(HFLM):
    """``HFLM`` with memoized tokenization; built once per worker around the resident model."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ids: dict[tuple[Any, ...], tuple[int, ...]] = {}
        self._batches: dict[tuple[Any, ...], tuple[Any, Any]] = {}

    def tok_encode(
        self,
        string: str,
        add_special_tokens: bool | None = None,
        left_truncate_len: int | None = None,
        **kwargs: Any,
    ) -> list[int]:
        key = (string, add_special_tokens, left_truncate_len, *sorted(kwargs.items()))
        ids = self._ids.get(key)
        if ids is None:
            ids = tuple(super().tok_encode(string, add_special_tokens, left_truncate_len, **kwargs))
            if len(self._ids) < MAX_MEMO:
                self._ids[key] = ids
        return list(ids)  # callers may extend or slice what they get

    def tok_batch_encode(
        self,
        strings: list[str],
        padding_side: str = "left",
        left_truncate_len: int | None = None,
        truncation: bool = False,
    ) -> tuple[Any, Any]:
        key = (tuple(strings), padding_side, left_truncate_len, truncation)
        pair = self._batches.get(key)
        if pair is None:
            pair = super().tok_batch_encode(strings, padding_side, left_truncate_len, truncation)
            if len(self._batches) < MAX_MEMO:
                self._batches[key] = pair
        ids, mask = pair
        return ids.clone(), mask.clone()  # generate must not see a tensor another call holds
