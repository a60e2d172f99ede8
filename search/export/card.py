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
) -> str:
    """Markdown: front matter, method, a table of checkpoints and weights, params, extra sections.

    ``extra`` maps a section title to its content: a string is written as is, anything else as
    a JSON block (a mapping of scalars as a two-column table).
    """
    groups = plan.n_groups
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- merge",
        "- merge-search",
        "---",
        "",
        f"# {title}",
        "",
        f"A merge of {len(names)} checkpoints made with merge-search.",
        "",
        "## Method",
        "",
        f"`{method.name}`: {method.doc}.",
        "",
    ]
    if method.needs_base:
        lines += [f"Base model: `{base_name}`.", ""]
    head = [
        "checkpoint",
        *(["weight"] if groups == 1 else [f"weight (group {g})" for g in range(groups)]),
    ]
    head += ["applied" if groups == 1 else f"applied (group {g})" for g in range(groups)]
    lines += ["## Checkpoints", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
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
    lines += [
        '"applied" is the coefficient the method gives each checkpoint (normalized, times λ).',
        "",
    ]
    lines += ["## Parameters", "", "| parameter | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in params.items()]
    lines += [f"| seed | {plan.seed} |", f"| plan key | `{plan.key}` |", f"| dtype | {dtype} |", ""]
    for title_, content in (extra or {}).items():
        lines += [f"## {title_}", "", *_section(content), ""]
    if mergekit_yaml:
        intro = "The same merge as a mergekit config (`mergekit_config.yml`):"
        if method.mergekit is None:
            intro = (
                f"mergekit has no `{method.name}` method. `mergekit_config.yml` writes this merge "
                "in mergekit's format with merge-search's own keys; `merge-search merge` "
                "reproduces it, `mergekit-yaml` cannot:"
            )
        lines += [
            "## mergekit",
            "",
            intro,
            "",
            "```yaml",
            mergekit_yaml.rstrip(),
            "```",
            "",
        ]
    return "\n".join(lines)


def _section(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content.rstrip()]
    if isinstance(content, Mapping) and all(
        isinstance(v, str | int | float | bool) or v is None for v in content.values()
    ):
        return ["| key | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in content.items())]
    return ["```json", json.dumps(content, indent=2, sort_keys=True, default=str), "```"]
