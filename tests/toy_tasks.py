"""The toy multiple-choice data every test package scores, and its one lm-eval task writer.

:data:`TOY_CHOICES` holds ``(question, choices, answer index)`` items; tests take slices of it
(the study tests its first ten, the report tests three disjoint sixes for the search, held-out
and test splits). :func:`write_choice_task` writes a local lm-eval task over such items:
``<name>.jsonl`` and ``<name>.yaml`` (metric ``acc`` unless told otherwise).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

TOY_CHOICES = [
    ("ab+c=", ["abc", "cab", "bca"], 0),
    ("1+2=", ["3", "4", "5"], 0),
    ("dog:", ["god", "odg", "dgo"], 0),
    ("x*y=", ["xy", "yx", "xx"], 1),
    ("red.", ["der", "erd", "red"], 2),
    ("9-4=", ["5", "6", "4"], 0),
    ("sun!", ["nus", "uns", "sun"], 0),
    ("(a)", ["a", "b", "c"], 0),
    ("go,", ["og", "go", "oo"], 1),
    ("7/7=", ["1", "7", "0"], 0),
    ("b+a=", ["ab", "ba", "aa"], 1),
    ("cat.", ["tac", "act", "cta"], 0),
    ("sat?", ["tas", "ats", "sat"], 2),
    ("2*3=", ["6", "5", "9"], 0),
    ("up!", ["pu", "up", "uu"], 1),
    ("mat.", ["tam", "mat", "atm"], 1),
    ("8-1=", ["7", "6", "9"], 0),
    ("ox,", ["xo", "ox", "oo"], 1),
]


def choice_task(name: str, data: Path, **extra: Any) -> dict[str, Any]:
    """The lm-eval YAML of a local multiple-choice task ``name`` (metric ``acc`` unless
    ``extra`` says otherwise) over a JSON-lines file of ``{question, choices, answer}``."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc"}],
        **extra,
    }


def write_choice_task(
    folder: Path, name: str, items: Sequence[tuple[str, list[str], int]], **extra: Any
) -> Path:
    """A local multiple-choice lm-eval task ``name`` in ``folder`` (:func:`choice_task`): its
    data ``<name>.jsonl`` from ``(question, choices, answer index)`` items and ``<name>.yaml``."""
    data = folder / f"{name}.jsonl"
    data.write_text(
        "".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in items)
    )
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(choice_task(name, data, **extra)))
    return folder
