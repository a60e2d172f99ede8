"""A storage client a test runs on a host of its own (``python -m
tests.search.faults.storage_client MODE URL``), to be cut off at a known moment.

Modes (each opens the storage as a worker does: ``connect(URL, workers)``, grace period 3 s,
``storage_retry_s`` 5 s; says ``ready`` on stdout, then waits for a line on stdin or sleeps):

- ``hold-lock URL STUDY``: enters the study's budget lock, says ``ready`` and sleeps inside it;
- ``call-after-cut URL``: reads once (a pooled connection stays open), says ``ready``, waits for
  a line on stdin (sent once the link is down), then reads again the way workers do
  (:func:`~search.study.storage.retrying`): exit 2 with the one line of its ``UserError``.
"""

from __future__ import annotations

import sys
import time

from search.errors import UserError
from search.study.config import WorkersConfig
from search.study.storage import budget_lock, connect, retrying

WORKERS = WorkersConfig(heartbeat_s=1, grace_s=3, storage_retry_s=5)


def main(argv: list[str]) -> int:
    mode, url = argv[0], argv[1]
    storage = connect(url, WORKERS)
    if mode == "hold-lock":
        with budget_lock(storage, argv[2]):
            print("ready", flush=True)
            time.sleep(600)
        return 0
    storage.get_all_studies()
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        retrying(storage.get_all_studies, "storage of the cut host", WORKERS.storage_retry_s)
    except UserError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
