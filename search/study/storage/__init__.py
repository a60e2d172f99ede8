"""The study's storage, split as Optuna splits its own (``_rdb/``, ``_heartbeat.py``).

A study lives in an Optuna RDB storage (SQLite for one host, PostgreSQL for several):

- :mod:`.connect`: open the storage by its URL (heartbeats and retries for workers), load a
  study, redact a URL's password for messages;
- :mod:`.resume`: create the study with its seed trials, or resume it after checking that the
  checkpoints, the search space and the scoring are unchanged;
- :mod:`.budget`: claim trials under a lock so the budget is exact across workers and resumes;
- :mod:`.heartbeat`: the heartbeat thread of a running trial: a worker that dies leaves a trial
  that goes stale (judged on one host's clock alone) and is retried;
- :mod:`.outage`: a storage outage is waited out with bounded backoff (``workers.storage_retry_s``).
"""

from __future__ import annotations

from search.study.storage.budget import (
    EVALUATION_SIZE_ATTR,
    Budget,
    budget_lock,
    claim_trial,
    count_states,
    examples_spent,
    finished,
    full_evaluations,
    release_trials,
    trial_counts,
)
from search.study.storage.connect import (
    connect,
    load_study,
    open_storage,
    quiet_experimental,
    redact,
    sqlite_path,
)
from search.study.storage.heartbeat import Heartbeat, StaleJudge, fail_stale_trials
from search.study.storage.outage import Outage, is_outage, retrying
from search.study.storage.resume import (
    CONFIG_ATTR,
    FINGERPRINT_ATTR,
    SCORING_ATTR,
    SPACE_ATTR,
    check_fingerprint,
    check_resume,
    create_or_resume,
    load_checked,
    signature,
)

__all__ = [
    "CONFIG_ATTR",
    "EVALUATION_SIZE_ATTR",
    "FINGERPRINT_ATTR",
    "SCORING_ATTR",
    "SPACE_ATTR",
    "Budget",
    "Heartbeat",
    "Outage",
    "StaleJudge",
    "budget_lock",
    "check_fingerprint",
    "check_resume",
    "claim_trial",
    "connect",
    "count_states",
    "create_or_resume",
    "examples_spent",
    "fail_stale_trials",
    "finished",
    "full_evaluations",
    "is_outage",
    "load_checked",
    "load_study",
    "open_storage",
    "quiet_experimental",
    "redact",
    "release_trials",
    "retrying",
    "signature",
    "sqlite_path",
    "trial_counts",
]
