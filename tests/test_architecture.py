"""The dependency rule of the packages (README "Architecture"), checked on the source with ast.

Every import statement counts, at module top or inside a function (a lazy import is still a
dependency). The rule, importer → what it may import within the project:

- foundation (``search``, ``search.errors``) — allowed everywhere;
- ``search.engine`` → engine; ``evaluators`` → evaluators;
- ``search.calibration`` → calibration, evaluators;
- ``search.export`` → export, engine;
- ``search.study`` → study, export, engine, evaluators, the strategies' registry;
- ``search.strategies.<name>`` → its own folder, the registry, study, engine, calibration,
  evaluators;
- ``search.report`` → report, study, export, engine, evaluators, the registry;
- ``search.zoo`` → zoo, evaluators;
- ``search.commands`` → anything; ``search.cli`` → commands.

Besides: only ``search.commands`` and ``search.cli`` import ``argparse``; the engine imports no
Optuna and no lm-eval; module-level imports between project modules form no cycle.

A folder per strategy (the packages of ``search/strategies/``): outside
``search/strategies/<name>/``, nothing imports it; and once the registry
``search/strategies/__init__.py`` lists it, nothing but the registry names it. "Names it": a
word of the strategy (:func:`strategy_words`: ``fisher``, ``staged``, ``racing``/``racer``,
``frank_wolfe``/``FrankWolfe``) inside an identifier (a name, attribute, argument, function or
class) or a string constant other than a docstring, in any module of ``search/`` or
``evaluators/`` (commands included: they reach a strategy through the registry too).
Docstrings and comments may mention a strategy.
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
FOUNDATION = ("search", "search.errors")
ALLOWED: dict[str, tuple[str, ...]] = {
    "search.engine": ("search.engine",),
    "evaluators": ("evaluators",),
    "search.export": ("search.export", "search.engine"),
    "search.calibration": ("search.calibration", "evaluators"),
    "search.study": (
        "search.study",
        "search.export",
        "search.engine",
        "evaluators",
        "search.strategies",
    ),
    "search.strategies": (
        "search.strategies",
        "search.study",
        "search.engine",
        "search.calibration",
        "evaluators",
    ),
    "search.report": (
        "search.report",
        "search.study",
        "search.export",
        "search.engine",
        "evaluators",
        "search.strategies",
    ),
    "search.zoo": ("search.zoo", "evaluators"),
    "search.commands": PACKAGES,
    "search.cli": ("search.commands",),
}
PARSERS = ("search.commands", "search.cli")  # the only places that parse arguments
FORBIDDEN_LIBRARIES = {"search.engine": ("optuna", "lm_eval", "optuna_dashboard")}
REGISTRY = "search.strategies"  # the one module outside a strategy's folder that names it
REGISTRY_FILE = Path("search", "strategies", "__init__.py")


def strategy_folders(root: Path) -> list[str]:
    """The strategies: the packages under ``search/strategies/``."""
    base = root / "search" / "strategies"
    return sorted(p.parent.name for p in base.glob("*/__init__.py")) if base.is_dir() else []


def registered(root: Path) -> list[str]:
    """The strategies the registry lists (the keys of its ``STRATEGIES`` dict, read with ast)."""
    tree = ast.parse((root / REGISTRY_FILE).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(node.value, ast.Dict):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "STRATEGIES" for t in targets):
                return [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
    return []


def strategy_words(name: str) -> tuple[str, ...]:
    """How a strategy's name shows up in code, lower-cased: ``frank_wolfe`` and ``frankwolfe``
    (``FrankWolfeSampler``), plus the words its idea goes by (staged scoring races the front)."""
    also = {"staged": ("racing", "racer")}
    return (name, name.replace("_", ""), *also.get(name, ()))


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
            for alias in node.names:  # ``from search import errors`` imports a module
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
    strategies = [f"{REGISTRY}.{n}" for n in strategy_folders(root)]
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
            strategy = next((p for p in strategies if _within(target, p)), None)
            if strategy is not None and not _within(name, strategy):
                found.setdefault(
                    (where, line, "strategy"),
                    f"{where}:{line}: {name} imports the strategy {strategy} "
                    f"(reach it through the registry, {REGISTRY})",
                )
            if top not in PACKAGES or target in FOUNDATION or here is None:
                continue
            if not any(target == a or target.startswith(a + ".") for a in ALLOWED[here]):
                if target in modules or any(m.startswith(target + ".") for m in modules):
                    found.setdefault(
                        (where, line, "rule"), f"{where}:{line}: {name} imports {target}"
                    )
    return list(found.values())


def named(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """``(identifier or string, line)`` for every name, attribute, argument, keyword, function,
    class and alias and every string constant of a module, docstrings left out."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Name):
            yield node.id, line
        elif isinstance(node, ast.Attribute):
            yield node.attr, line
        elif isinstance(node, ast.arg | ast.keyword) and node.arg:
            yield node.arg, line
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node.name, line
        elif isinstance(node, ast.alias):
            yield node.asname or node.name, line
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, line
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docstrings:
                yield node.value, line


def naming_violations(root: Path) -> list[str]:
    """Every identifier or string outside a registered strategy's folder (and the registry)
    that names it, as ``file:line: what``."""
    folders = registered(root)
    found: dict[tuple[Path, int, str], str] = {}
    for path in sorted(p for package in PACKAGES for p in (root / package).rglob("*.py")):
        where = path.relative_to(root)
        if where == REGISTRY_FILE:
            continue
        mine = where.parts[:2] == ("search", "strategies") and len(where.parts) > 3
        tree = ast.parse(path.read_text(), filename=str(path))
        for text, line in named(tree):
            lower = text.lower()
            for name in folders:
                if mine and where.parts[2] == name:
                    continue
                word = next((w for w in strategy_words(name) if w in lower), None)
                if word is not None:
                    found.setdefault(
                        (where, line, name),
                        f"{where}:{line}: {text[:60]!r} names the strategy {name} (outside "
                        f"search/strategies/{name}/ only the registry may)",
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


def test_no_module_names_a_strategy_outside_its_folder() -> None:
    assert {"staged", "fisher", "frank_wolfe"} <= set(registered(REPO))  # words to look for
    assert naming_violations(REPO) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("search/study/bad.py", "SECTION = 'eval.staged'\n", "names the strategy staged"),
        ("evaluators/bad.py", "def f(racing_violation):\n    pass\n", "strategy staged"),
        ("search/engine/bad.py", "import x\nx.load_fishers()\n", "strategy fisher"),
        ("search/report/bad.py", "class FrankWolfeRow:\n    pass\n", "strategy frank_wolfe"),
        ("search/strategies/staged/bad.py", "KIND = 'fisher'\n", "strategy fisher"),
    ],
)
def test_a_strategy_named_outside_its_folder_is_caught(
    tmp_path: Path, module: str, source: str, expected: str
) -> None:
    """The checker itself: a copy of the tree plus one module that names a strategy fails it;
    a docstring that mentions one does not."""
    _copy_tree(tmp_path)
    (tmp_path / "search" / "study" / "fine.py").write_text('"""Staged scoring, Fisher."""\n')
    (tmp_path / module).write_text(source)
    found = naming_violations(tmp_path)
    assert len(found) == 1 and expected in found[0] and found[0].startswith(module)


def _copy_tree(tmp_path: Path) -> None:
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            copy = tmp_path / path.relative_to(REPO)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(path.read_text())


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
        ("search/study/worker2.py", "from search.strategies.staged import scorer\n", "strategy"),
        ("search/strategies/fisher/bad.py", "import search.strategies.staged\n", "strategy"),
        ("search/export/bad.py", "from search.strategies import get_method\n", "imports"),
    ],
)
def test_a_wrong_import_is_caught(tmp_path: Path, module: str, source: str, expected: str) -> None:
    """The checker itself: a copy of the tree plus one wrong import must fail it."""
    _copy_tree(tmp_path)
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
eval: {staged: %s}
"""


@pytest.mark.parametrize(
    ("staged", "expected"), [("null", ""), ("true", "search.strategies.staged")]
)
def test_a_strategy_is_imported_only_when_a_config_asks_for_it(
    tmp_path: Path, staged: str, expected: str
) -> None:
    """The study loop, its report and a parsed config import no strategy unless it is on."""
    strategies = [f"{REGISTRY}.{n}" for n in strategy_folders(REPO)]
    (tmp_path / "a").mkdir()
    (tmp_path / "c.yaml").write_text(STAGED_CONFIG % staged)
    code = (
        "import sys, search.study, search.study.launch, search.study.worker, search.report.view; "
        "from search.study.config import load_config; "
        f"load_config({str(tmp_path / 'c.yaml')!r}); "
        f"print(','.join(p for p in {strategies!r} if p in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == expected
