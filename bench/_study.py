"""What the bench scripts share: a study config pointed at a demo pool, and one study run to its
budget through the study service in this process (one worker, the caller's resident runtime).

Imported by the scripts beside it (``python bench/X.py`` puts this folder on ``sys.path``);
the scripts put the repository root there first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def on_pool(data: dict[str, Any], zoo: Path) -> dict[str, Any]:
    """The study config ``data`` with its checkpoints, base and tasks taken from ``zoo`` (a
    folder ``merge-search zoo build`` wrote), the folder names kept."""
    return {
        **data,
        "checkpoints": [str(zoo / Path(p).name) for p in data["checkpoints"]],
        "base_model": str(zoo / Path(data["base_model"]).name),
        "tasks_path": str(zoo / "tasks"),
    }


def run_study(path: Path, runtime: Any, proposals: Any = None) -> Any:
    """Create the study of the config at ``path`` and run it to its budget with ``runtime``
    (a :class:`search.study.worker.Runtime` for the same pool and objectives); the study.

    ``proposals``: Frank-Wolfe endpoints computed once for several runs
    (:func:`search.strategies.frank_wolfe.paths.propose`), used when the config asks for them.
    """
    from search.study.config import load_config
    from search.study.samplers import build_sampler, constraints_func
    from search.study.space import SearchSpace
    from search.study.storage import create_or_resume, open_storage
    from search.study.worker import run_worker

    cfg = load_config(path)
    storage = open_storage(cfg, create=True)
    space = SearchSpace.build(cfg, runtime.pool.names)
    for feature in cfg.strategies:
        if feature.name == "frank_wolfe":
            feature.proposals = proposals
    study, _ = create_or_resume(cfg, storage, space, runtime.pool.identity.fingerprint(), path)
    study.sampler = build_sampler(
        cfg.sampler, constraints=constraints_func(bool(cfg.constraints), cfg.strategies)
    )
    run_worker(cfg, study, storage, runtime)
    return study
