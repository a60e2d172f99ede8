"""The library leaves the user's environment alone: importing it sets no Hugging Face variable.

Whether transformers, datasets and lm-eval may reach the hub is the user's choice
(``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``, ``TRANSFORMERS_OFFLINE``); ``make demo``,
``make test`` and ``tests/conftest.py`` set them for this repository's own runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")

# every module of both packages, imported in a fresh interpreter; a module that needs an
# optional extra (vLLM) may fail to import, which is no concern of this test
PROBE = """
import importlib, json, os, pkgutil
import evaluators, search
for package in (search, evaluators):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        try:
            importlib.import_module(info.name)
        except ImportError:
            pass
names = %r
print(json.dumps({n: os.environ.get(n) for n in names}))
"""


def test_importing_every_module_sets_no_hugging_face_variable():
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", PROBE % (VARIABLES,)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == dict.fromkeys(VARIABLES)
