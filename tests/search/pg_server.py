"""A throwaway PostgreSQL server of a test's own (never the shared one), for tests that restart
it, cut it off or stop it.

The server runs from ``/usr/lib/postgresql/15/bin`` as the ``postgres`` user (``initdb``
refuses root) in a temporary folder, on a unix socket, and on TCP only at the addresses a test
names. Without the binaries a test skips with the reason; with ``CI`` set it fails instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def why_not() -> str | None:
    """Why a throwaway server cannot run here, or ``None``."""
    if not (PG_BIN / "initdb").is_file() or not (PG_BIN / "pg_ctl").is_file():
        return f"no PostgreSQL server binaries in {PG_BIN}"
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not _has_user("postgres")):
        return "running as root without `runuser` or a `postgres` user (initdb refuses root)"
    return None


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A throwaway PostgreSQL cluster: unix socket in ``root``, trust auth; TCP on ``listen``
    (comma-separated addresses, as ``listen_addresses``; empty: none)."""

    root: Path
    port: int
    listen: str = ""

    @property
    def url(self) -> str:
        """Over the unix socket."""
        return f"postgresql://postgres@/postgres?host={self.root}&port={self.port}"

    def tcp_url(self, address: str) -> str:
        """Over TCP to ``address`` (one of ``listen``)."""
        return f"postgresql://postgres@{address}:{self.port}/postgres"

    def _as_owner(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=60)

    def ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses='{self.listen}'"
        self._as_owner(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.root / "data"),
            "-l",
            str(self.root / "log"),
            "-o",
            options,
            "-w",
            *args,
        )


@contextmanager
def throwaway_server(listen: str = "", trust: tuple[str, ...] = ()) -> Iterator[Server]:
    """Start a server (skip, or fail under ``CI``, where it cannot run); stop and remove it after.
    ``trust``: CIDR ranges besides loopback whose TCP clients are trusted (``pg_hba.conf``)."""
    why = why_not()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a throwaway PostgreSQL server: {why}")
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="pg-"))  # short: a socket path has at most 107 bytes
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    srv = Server(root, free_port(), listen)
    srv._as_owner(
        str(PG_BIN / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=trust"
    )
    if trust:
        with (root / "data" / "pg_hba.conf").open("a") as hba:
            hba.writelines(f"host all all {cidr} trust\n" for cidr in trust)
    srv.ctl("start")
    try:
        yield srv
    finally:
        try:
            srv.ctl("stop", "-m", "immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(root, ignore_errors=True)
