"""The dependency rule of the packages (README "Architecture"), checked on the source with ast.

Every import statement counts, at module top or inside a function (a lazy import is still a
dependency). The rule, importer → what it may import within the project:

- foundation (``search``, ``search.errors``, ``search._offline``) — allowed everywhere;
- ``search.engine`` → engine; ``evaluators`` → evaluators;
- ``search.export`` → export, engine;
- ``search.fisher`` → fisher, engine, evaluators;
- ``search.study`` → study, fisher, engine, evaluators;
- ``search.report`` → report, study, fisher, export, engine, evaluators;
- ``search.zoo`` → zoo, evaluators;
- ``search.commands`` → anything; ``search.cli`` → commands.

Besides: only ``search.commands`` and ``search.cli`` import ``argparse``; the engine imports no
Optuna and no lm-eval; module-level imports between project modules form no cycle; the study's
strategies (``search.study.staged``, ``.frank_wolfe``, ``.fisher``) are imported by nothing but
themselves (the loop reaches them through ``search.study.features``' registry, only when a
config turns them on).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("search", "evaluators")
FOUNDATION = ("search", "search.errors", "search._offline")
ALLOWED: dict[str, tuple[str, ...]] = {
    "search.engine": ("search.engine",),
    "evaluators": ("evaluators",),
    "search.export": ("search.export", "search.engine"),
    "search.fisher": ("search.fisher", "search.engine", "evaluators"),
    "search.study": ("search.study", "search.fisher", "search.engine", "evaluators"),
    "search.report": (
        "search.report",
        "search.study",
        "search.fisher",
        "search.export",
        "search.engine",
        "evaluators",
    ),
    "search.zoo": ("search.zoo", "evaluators"),
    "search.commands": PACKAGES,
    "search.cli": ("search.commands",),
}
PARSERS = ("search.commands", "search.cli")  # the only places that parse arguments
FORBIDDEN_LIBRARIES = {"search.engine": ("optuna", "lm_eval", "optuna_dashboard")}
STRATEGIES = ("search.study.staged", "search.study.frank_wolfe", "search.study.fisher")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(tree: ast.AST, *, top_level_only: bool = False) -> Iterator[tuple[str, int]]:
    """``(imported module, line)`` for every import; ``top_level_only`` skips functions and
    ``if TYPE_CHECKING:`` blocks (what runs when the module is imported)."""
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
            for alias in node.names:  # ``from search import _offline`` imports a module
                yield f"{node.module}.{alias.name}", node.lineno


def layer(module: str) -> str | None:
    """The rule's key for a project module (longest matching prefix)."""
    best = None
    for key in ALLOWED:
        if (module == key or module.startswith(key + ".")) and (
            best is None or len(key) > len(best)
        ):
            best = key
    return best


def project_modules(root: Path) -> dict[str, Path]:
    return {
        module_name(root, p): p
        for package in PACKAGES
        if (root / package).is_dir()
        for p in sorted((root / package).rglob("*.py"))
    }


def violations(root: Path) -> list[str]:
    """Every import that breaks the rule, as ``file:line: what``."""
    modules = project_modules(root)
    found: dict[tuple[Path, int, str], str] = {}  # one line per statement and kind
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        here = layer(name)
        where = path.relative_to(root)
        for target, line in imports(tree):
            top = target.split(".")[0]
            if top == "argparse" and not any(
                name == p or name.startswith(p + ".") for p in PARSERS
            ):
                found[where, line, "argparse"] = (
                    f"{where}:{line}: only search.commands parses arguments"
                )
            if here in FORBIDDEN_LIBRARIES and top in FORBIDDEN_LIBRARIES[here]:
                found[where, line, "library"] = f"{where}:{line}: {here} must not import {top}"
            strategy = next((p for p in STRATEGIES if _within(target, p)), None)
            if strategy is not None and not _within(name, strategy):
                found.setdefault(
                    (where, line, "strategy"),
                    f"{where}:{line}: {name} imports the strategy {strategy} "
                    "(reach it through search.study.features)",
                )
            if top not in PACKAGES or target in FOUNDATION or here is None:
                continue
            if not any(target == a or target.startswith(a + ".") for a in ALLOWED[here]):
                if target in modules or any(m.startswith(target + ".") for m in modules):
                    found.setdefault(
                        (where, line, "rule"), f"{where}:{line}: {name} imports {target}"
                    )
    return list(found.values())


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def import_cycles(root: Path) -> list[list[str]]:
    """Cycles among project modules through imports that run at import time."""
    modules = project_modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        deps = set()
        for target, _ in imports(tree, top_level_only=True):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                deps.add(target)
        graph[name] = deps
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_the_source_keeps_the_dependency_rule() -> None:
    assert violations(REPO) == []


def test_module_imports_form_no_cycle() -> None:
    assert import_cycles(REPO) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("search/engine/bad.py", "from search.study.config import StudyConfig\n", "imports"),
        ("search/engine/bad.py", "import optuna\n", "must not import optuna"),
        ("evaluators/bad.py", "def f():\n    from search.engine import pool\n", "imports"),
        ("search/study/bad.py", "from search.report.view import StudyView\n", "imports"),
        ("search/report/bad.py", "import argparse\n", "only search.commands parses"),
        ("search/study/worker2.py", "from search.study.staged import racer\n", "the strategy"),
    ],
)
def test_a_wrong_import_is_caught(tmp_path: Path, module: str, source: str, expected: str) -> None:
    """The checker itself: a copy of the tree plus one wrong import must fail it."""
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            copy = tmp_path / path.relative_to(REPO)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(path.read_text())
    (tmp_path / module).write_text(source)
    found = violations(tmp_path)
    assert len(found) == 1 and expected in found[0] and found[0].startswith(module)


def test_a_cycle_is_caught(tmp_path: Path) -> None:
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "__init__.py").write_text("")
    (tmp_path / "search" / "a.py").write_text("import search.b\n")
    (tmp_path / "search" / "b.py").write_text("from search import a\n")
    assert import_cycles(tmp_path) == [["search.a", "search.b", "search.a"]]


@pytest.mark.parametrize(
    ("statement", "absent"),
    [
        ("import search.engine", ("optuna", "lm_eval")),
        ("import search.engine.registry", ("torch", "optuna", "lm_eval")),
        ("import search.cli; search.cli.build_parser()", ("torch", "optuna", "lm_eval")),
    ],
)
def test_light_imports_stay_light(statement: str, absent: tuple[str, ...]) -> None:
    """What a module really pulls in when imported (a fresh interpreter each time)."""
    code = f"import sys; {statement}; print(','.join(m for m in {absent!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == ""


STAGED_CONFIG = """
name: light
checkpoints: [a]
objectives: [{name: o, tasks: [{task: t}]}]
eval: {racing: %s}
"""


@pytest.mark.parametrize(("racing", "expected"), [("null", ""), ("true", "search.study.staged")])
def test_a_strategy_is_imported_only_when_a_config_asks_for_it(
    tmp_path: Path, racing: str, expected: str
) -> None:
    """The study loop, its report and a parsed config import no strategy unless it is on."""
    (tmp_path / "a").mkdir()
    (tmp_path / "c.yaml").write_text(STAGED_CONFIG % racing)
    code = (
        "import sys, search.study, search.study.launch, search.study.worker, search.report.view; "
        "from search.study.config import load_config; "
        f"load_config({str(tmp_path / 'c.yaml')!r}); "
        f"print(','.join(p for p in {STRATEGIES!r} if p in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == expected
