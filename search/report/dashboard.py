"""optuna-dashboard on a study's storage, bound to 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Callable

from optuna_dashboard import run_server

from search.errors import UserError
from search.study.config import load_config
from search.study.storage import connect, redact, sqlite_path


def dashboard_target(target: str) -> tuple[str, str | None]:
    """(storage URL, study name or None) from a config path or a storage URL."""
    if "://" in target:
        url, name = target, None
    else:
        cfg = load_config(target)
        url, name = cfg.storage, cfg.name
    db = sqlite_path(url)
    if db is not None:
        if not db.is_file():
            raise UserError(
                f"{target}: storage {url}: no such file; run `merge-search launch` first"
            )
    return url, name


def serve(target: str, port: int, announce: Callable[[str], None] = print) -> None:
    """Run optuna-dashboard on the storage of ``target`` at 127.0.0.1:``port`` until Ctrl-C.

    ``target`` is a study config or a storage URL. The port and the storage are checked first
    (``UserError``); ``announce`` receives the URL line before the server blocks.
    """

    url, name = dashboard_target(target)
    host = "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise UserError(f"--port {port}: already in use on {host}; pick another port") from None
    try:
        storage = connect(url)
    except UserError as exc:
        raise UserError(f"{target}: {exc}") from None
    what = f"study {name!r} in " if name else ""
    announce(
        f"optuna-dashboard: {what}{redact(url)} at http://{host}:{port}/dashboard/ (Ctrl-C to stop)"
    )
    run_server(storage, host=host, port=port)
