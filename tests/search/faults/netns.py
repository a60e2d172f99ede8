"""Hosts of a test's own: network namespaces joined to the root namespace by veth pairs, whose
links the test can cut and restore.

Each :class:`Host` is a namespace ``ms-<letter>-<pid>`` with the inner end of a veth pair; the
outer end stays in the root namespace. The pair has a ``/30`` of its own under ``10.213.X.0/24``
(``X``: a third octet no address of the root namespace uses yet): the root side ``.4k+1`` (where
a server of the test listens), the host ``.4k+2``. :meth:`Host.cut` sets the outer end down, as a
pulled cable does: packets in either direction are dropped, open TCP connections stall (they are
not reset) and new ones get no answer; :meth:`Host.heal` sets it up again and the stalled
connections go on.

Needs root (``CAP_NET_ADMIN``), ``ip`` (iproute2) and network namespaces; where one is missing
a test skips naming it, and with ``CI`` set it fails instead (CI runs as root with iproute2).
Everything made here is removed on leaving :func:`hosts`, also when the test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pytest

PREFIX = "10.213"  # the test's own addresses (private, unlikely to be routed on a host)


def ip(*args: str) -> str:
    """``ip ARGS`` (raises ``CalledProcessError`` with its stderr); its stdout."""
    done = subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)
    return done.stdout


@dataclass(frozen=True)
class Host:
    """One namespace and its link to the root namespace.

    Attributes:
        name: the namespace (``ip netns``).
        outer: the veth end in the root namespace (what :meth:`cut` sets down).
        inner: the veth end inside the namespace.
        server_ip: the root side's address: where the host reaches a server of the test.
        address: the host's own address.
        subnet: the pair's ``/30``, for a server's list of trusted clients.
    """

    name: str
    outer: str
    inner: str
    server_ip: str
    address: str
    subnet: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        """The link down: the host is cut off from the root namespace."""
        ip("link", "set", self.outer, "down")

    def heal(self) -> None:
        """The link up again (its address and route come back with it)."""
        ip("link", "set", self.outer, "up")

    def pids(self) -> set[int]:
        """The processes running inside the namespace."""
        return {int(p) for p in ip("netns", "pids", self.name).split()}


def why_not() -> str | None:
    """Why namespaces of a test's own cannot be made here, or ``None``."""
    if os.geteuid() != 0:
        return "not root: network namespaces and veth pairs need CAP_NET_ADMIN"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) to make network namespaces"
    probe = f"ms-probe-{os.getpid()}"
    try:
        ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        said = getattr(exc, "stderr", None) or str(exc)
        return f"no network namespace support (`ip netns add` failed: {said.strip()})"
    ip("netns", "delete", probe)
    return None


def free_octet(start: int) -> int:
    """A third octet ``X`` such that no address of the root namespace is in ``10.213.X.0/24``."""
    used = ip("-4", "-o", "addr", "show")
    for step in range(256):
        x = (start + step) % 256
        if f" {PREFIX}.{x}." not in used:
            return x
    raise RuntimeError(f"every {PREFIX}.X.0/24 is in use")


def _make(name: str, outer: str, inner: str, x: int, k: int, stack: ExitStack) -> Host:
    base = 4 * k
    server_ip, address = f"{PREFIX}.{x}.{base + 1}", f"{PREFIX}.{x}.{base + 2}"
    ip("netns", "add", name)
    stack.callback(_quietly, "netns", "delete", name)
    ip("link", "add", outer, "type", "veth", "peer", "name", inner)
    stack.callback(_quietly, "link", "delete", outer)  # removes both ends
    ip("link", "set", inner, "netns", name)
    ip("addr", "add", f"{server_ip}/30", "dev", outer)
    ip("link", "set", outer, "up")
    inside = ("netns", "exec", name, "ip")
    ip(*inside, "addr", "add", f"{address}/30", "dev", inner)
    ip(*inside, "link", "set", inner, "up")
    ip(*inside, "link", "set", "lo", "up")
    return Host(name, outer, inner, server_ip, address, f"{PREFIX}.{x}.{base}/30")


def _quietly(*args: str) -> None:
    """``ip ARGS``, nothing said when it fails (already gone)."""
    subprocess.run(["ip", *args], capture_output=True, timeout=30, check=False)


@contextmanager
def hosts(n: int = 2) -> Iterator[list[Host]]:
    """``n`` hosts ``ms-a-<pid>``, ``ms-b-<pid>``, … (skip, or fail under ``CI``, where they
    cannot be made); their namespaces and veth pairs are removed on leaving, whatever happened.
    """
    why = why_not()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs network namespaces of the test's own: {why}")
        pytest.skip(why)
    pid = os.getpid()
    x = free_octet(pid % 256)
    with ExitStack() as stack:
        made = []
        for k in range(n):
            letter = chr(ord("a") + k)
            # interface names have at most 15 characters: "msa" + pid (<= 7 digits) + "o"/"i"
            made.append(
                _make(f"ms-{letter}-{pid}", f"ms{letter}{pid}o", f"ms{letter}{pid}i", x, k, stack)
            )
        yield made


def leftovers(pid: int) -> list[str]:
    """Namespaces and links named after ``pid`` that still exist (none after :func:`hosts`)."""
    names = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
    links = [
        line.split(":")[1].strip().split("@")[0] for line in ip("-o", "link", "show").splitlines()
    ]
    return [  # namespaces ms-<letter>-<pid>; links ms<letter><pid><o|i>
        n
        for n in names + links
        if (n.startswith("ms-") and n.endswith(f"-{pid}"))
        or (n.startswith("ms") and n[3:-1] == str(pid) and n[-1] in "oi")
    ]
