"""Config fuzzing: generated study configs (wrong types, out-of-range and huge numbers, unknown
and misspelled keys, empty lists, unicode paths, YAML anchors and duplicate keys) are each either
accepted or refused with one line naming the field (exit status 2 from the CLI), never a
traceback. In-process through the CLI's config loading (``load_config``), plus a handful through
the real CLI."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.errors import UserError
from search.study.config import StudyConfig, load_config
from tests.search.study_fixtures import REPO, build_pool_and_tasks, study_config

EXAMPLES = 1000  # per test: the two fuzz tests make 2,000 configs a run
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same configs every run: a failure is reproducible
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def base(tiny_zoo, tmp_path_factory) -> tuple[dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("fuzz")
    data = study_config(build_pool_and_tasks(root, tiny_zoo), "fuzz", f"sqlite:///{root / 'f.db'}")
    data["sampler"] = {"name": "tpe", "seed": 0}
    data["constraints"] = [{"objective": "ppl", "max": 100.0}]
    assert load_config(_write(root / "ok.yaml", yaml.safe_dump(data)))  # the base is valid
    return data, root


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path into ``node`` (dict keys and list indices), parents before children."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield (*prefix, i)
            yield from _paths(value, (*prefix, i))


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=12)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -1, 1, 2**63, -(2**63) - 1, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.sampled_from(["auto", "cpu", "cuda:7", "linear", "ties", "tpe", "nsga2", "maximize", ""]),
    TEXT.map(lambda s: f"/tmp/ünïcødé-{s}/模型"),  # unicode paths
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=6,
)


def _misspell(key: str, how: int) -> str:
    if not key:
        return "x"
    i = how % len(key)
    return [key[:i] + key[i + 1 :], key[:i] + key[i] * 2 + key[i:], key.upper(), key + "s"][
        how % 4
    ] or key + "_"


@st.composite
def mutated(draw: st.DrawFn, data: dict[str, Any]) -> tuple[dict[str, Any], list[tuple]]:
    """``data`` with one to three mutations; the key paths they touched."""
    out = copy.deepcopy(data)
    touched: list[tuple] = []
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(out))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = out
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        kind = draw(
            st.sampled_from(["replace", "replace", "delete", "unknown", "misspell", "empty"])
        )
        if kind == "replace":
            parent[key] = draw(VALUES)
        elif kind == "delete":
            del parent[key]
        elif kind == "empty":
            parent[key] = draw(st.sampled_from([[], {}, "", None]))
        elif isinstance(parent, dict):  # unknown or misspelled key beside ``key``
            new = draw(TEXT) if kind == "unknown" else _misspell(str(key), draw(st.integers(0, 99)))
            parent[new] = parent[key] if kind == "misspell" else draw(VALUES)
            if kind == "misspell" and new != key:
                del parent[key]
            touched.append((*path[:-1], new))  # named as unknown, or the old one as missing
        else:
            parent[key] = draw(VALUES)
        touched.append(path)
    return out, touched


def _check(text: str, root: Path, touched: list[tuple]) -> None:
    """Load the config text: accepted, or one ``UserError`` line that starts with the field it
    refuses (``field.path: what is expected``)."""
    path = _write(root / "fuzzed.yaml", text)
    try:
        load_config(path)
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message, message
        assert message.startswith(f"{path}: "), message
        said = message[len(f"{path}: ") :]
        fields = {f.alias or n for n, f in StudyConfig.model_fields.items()}
        fields |= {str(path[0]) for path in touched}  # an unknown key the mutation added
        yaml_level = ("not valid YAML", "expected a mapping of config fields")
        named = said.startswith(("'", '"')) or any(  # a quoted key: an odd unknown one
            said.startswith((f"{n}:", f"{n}.", f"{n}[")) for n in fields
        )
        assert said.startswith(yaml_level) or named, f"{said!r} names no config field"


def _dump(data: Any) -> str | None:
    try:
        return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    except (yaml.YAMLError, ValueError, TypeError):
        return None


@FUZZ
@given(data=st.data())
def test_fuzzed_config_fields_are_accepted_or_refused_in_one_line(base, data):
    valid, root = base
    config, touched = data.draw(mutated(valid))
    text = _dump(config)
    if text is not None:
        _check(text, root, touched)


TOP = ("merge", "eval", "budget", "workers", "sampler", "objectives", "checkpoints", "name")


@st.composite
def yaml_tricks(draw: st.DrawFn, data: dict[str, Any]) -> tuple[str, list[tuple]]:
    """The valid config's YAML with a duplicate top-level key or an anchor reused elsewhere."""
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    key = draw(st.sampled_from([k for k in data if k in TOP] + list(data)))
    if draw(st.booleans()):  # a duplicate key: the later one is what YAML loaders keep
        value = _dump({key: draw(VALUES)})
        return text + (value or f"{key}: null\n"), [(key,)]
    other = draw(st.sampled_from([k for k in data if k != key]))
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
    lines[at] = (
        lines[at].replace(f"{key}:", f"{key}: &shared", 1)
        if lines[at].endswith(":")
        else f"{key}: &shared {lines[at].split(':', 1)[1].strip()}"
    )
    lines = [ln for ln in lines if not ln.startswith(f"{other}:")]
    kept, skip = [], False
    for line in lines:  # drop the other key's indented block, then alias it to the anchor
        if skip and line.startswith((" ", "-")):
            continue
        skip = False
        kept.append(line)
    text = "\n".join(kept) + f"\n{other}: *shared\n"
    return text, [(key,), (other,)]


@FUZZ
@given(data=st.data())
def test_yaml_anchors_and_duplicate_keys_are_accepted_or_refused_in_one_line(base, data):
    valid, root = base
    text, touched = data.draw(yaml_tricks(valid))
    _check(text, root, touched)


BROKEN = [
    {"budget": {"n_trials": -(10**30)}},
    {"merge": {"method": "linear", "weightz": {"low": 0, "high": 1}}},
    {"objectives": []},
    {"checkpoints": ["/tmp/ünïcødé/模型"]},
    {"eval": {"limit": float("nan"), "batch_size": 8}},
]


@pytest.mark.parametrize("change", BROKEN, ids=lambda c: next(iter(c)))
def test_the_cli_refuses_a_fuzzed_config_with_status_2_and_the_same_line(base, change):
    valid, root = base
    path = _write(root / "cli.yaml", yaml.safe_dump({**valid, **change}, allow_unicode=True))
    with pytest.raises(UserError) as info:
        load_config(path)
    proc = subprocess.run(
        [sys.executable, "-m", "search.cli", "launch", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"merge-search: error: {info.value}"]
