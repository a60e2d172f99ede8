"""The README.md model card of an exported merge."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from search.engine.plan import MergePlan
from search.engine.registry import MergeMethod


def model_card(
    title: str,
    plan: MergePlan,
    method: MergeMethod,
    params: Mapping[str, Any],
    names: Sequence[str],
    coefficients: Sequence[Sequence[float]],
    base_name: str | None,
    dtype: str,
    mergekit_yaml: str | None,
    extra: Mapping[str, Any] | None = None,
    hub_ids: Sequence[str | None] = (),
    base_hub_id: str | None = None,
) -> str:
    """Markdown: front matter, method, a table of checkpoints and weights, params, extra sections.

    ``dtype`` is the parameters table's dtype row: the written dtype and how it was reached.
    ``hub_ids`` (per checkpoint) and ``base_hub_id``: the Hub IDs of inputs that came from the
    Hub; the front matter's ``base_model`` list names those by ID, the others by name.
    ``extra`` maps a section title to its content: a string is written as is, anything else as
    a JSON block (a mapping of scalars as a two-column table).
    """
    base = base_name if method.needs_base else None
    ids = [i or n for i, n in zip(hub_ids or [None] * len(names), names, strict=True)]
    lines = [
        *_front_matter(ids, (base_hub_id or base) if base else None),
        f"# {title}",
        "",
        f"A merge of {len(names)} checkpoints made with merge-search.",
        "",
        "## Method",
        "",
        f"`{method.name}`: {method.doc}.",
        "",
        *([f"Base model: `{base_hub_id or base}`.", ""] if base else []),
        *_checkpoints(plan, names, coefficients),
        "## Parameters",
        "",
        "| parameter | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in params.items()),
        f"| seed | {plan.seed} |",
        f"| plan key | `{plan.key}` |",
        f"| dtype | {dtype} |",
        "",
    ]
    for title_, content in (extra or {}).items():
        lines += [f"## {title_}", "", *_section(content), ""]
    if mergekit_yaml:
        lines += _mergekit(method, mergekit_yaml)
    return "\n".join(lines)


def _front_matter(names: Sequence[str], base: str | None) -> list[str]:
    """The Hub's metadata for a merge (as mergekit writes it): the inputs as ``base_model``,
    ``base_model_relation: merge``, and the ``merge`` and ``mergekit`` tags."""
    return [
        "---",
        "base_model:",
        *(f"- {name}" for name in ([base] if base else []) + list(names)),
        "base_model_relation: merge",
        "library_name: transformers",
        "tags:",
        "- merge",
        "- mergekit",
        "- merge-search",
        "---",
        "",
    ]


def _checkpoints(
    plan: MergePlan, names: Sequence[str], coefficients: Sequence[Sequence[float]]
) -> list[str]:
    """The table of each checkpoint's weights (per layer group) and applied coefficients."""
    groups = plan.n_groups
    head = [
        "checkpoint",
        *(["weight"] if groups == 1 else [f"weight (group {g})" for g in range(groups)]),
        *(["applied"] if groups == 1 else [f"applied (group {g})" for g in range(groups)]),
    ]
    lines = ["## Checkpoints", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row, coeff in zip(names, plan.weights, coefficients, strict=True):
        cells = [f"`{name}`", *(f"{w:.6g}" for w in row), *(f"{c:.6g}" for c in coeff)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if groups > 1:
        lines += [
            f"Weights per layer group: the transformer blocks are split into {groups} contiguous "
            "groups; the embeddings go with group 0, the final norm and lm_head with the last.",
            "",
        ]
    return [
        *lines,
        '"applied" is the coefficient the method gives each checkpoint (normalized, times λ).',
        "",
    ]


def _mergekit(method: MergeMethod, mergekit_yaml: str) -> list[str]:
    intro = "The same merge as a mergekit config (`mergekit_config.yml`):"
    if method.mergekit is None:
        intro = (
            f"mergekit has no `{method.name}` method. `mergekit_config.yml` writes this merge "
            "in mergekit's format with merge-search's own keys; `merge-search merge` "
            "reproduces it, `mergekit-yaml` cannot:"
        )
    return ["## mergekit", "", intro, "", "```yaml", mergekit_yaml.rstrip(), "```", ""]


def _section(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content.rstrip()]
    if isinstance(content, Mapping) and all(
        isinstance(v, str | int | float | bool) or v is None for v in content.values()
    ):
        return ["| key | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in content.items())]
    return ["```json", json.dumps(content, indent=2, sort_keys=True, default=str), "```"]
