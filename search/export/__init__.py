"""Export: a merge written as a Hugging Face folder, mergekit's YAML both ways, the model card.

- :mod:`~search.export.folder` — :func:`export_merge` (safetensors shards, configs, tokenizer,
  card, ``mergekit_config.yml``, written beside the target and renamed into place) and
  :func:`merge_from_yaml` (``merge-search merge``);
- :mod:`~search.export.mergekit_yaml` — a plan as mergekit's YAML, and mergekit's YAML read;
- :mod:`~search.export.card` — the ``README.md`` model card.

Dependencies: :mod:`search.engine` only (engine ← export ← report).
"""

from __future__ import annotations
