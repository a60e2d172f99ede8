"""Checkpoints named by Hugging Face Hub ID: ``org/name`` or ``org/name@revision``.

mergekit users write models that way. :func:`resolve_model` turns what a config or a mergekit
YAML names into a local folder, once, where the config is read (the commands' edge); inside the
engine a checkpoint is always a local folder. A folder that exists always wins over an ID.

An ID is fetched with huggingface_hub's ``snapshot_download`` into its cache (``$HF_HOME/hub``),
only the files a merge reads (:data:`FILES`). Whether that may use the network is the user's
choice: with ``HF_HUB_OFFLINE=1``, or without a network, it resolves from the cache or fails
with one line naming the ID and how to pre-fetch it. A full 40-hex commit is looked up in the
cache first (a commit never changes).

A snapshot folder of the cache (``models--ORG--NAME/snapshots/<commit>``) says which ID and
commit it holds: :func:`hub_id` recovers them, so names, the model card's ``base_model`` list
and the mergekit YAML show the ID while everything else reads the folder. Folders are
fingerprinted by content either way.
"""

from __future__ import annotations

import re
from pathlib import Path

from search.errors import UserError

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
# the files a merge reads: weights, configs and every tokenizer file (no other formats)
FILES = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "chat_template.*",
)


def resolve_model(name: str | Path, field: str) -> Path:
    """The local folder of ``name``: the path itself when it exists or is not an ID, else the
    hub snapshot of the ID (``UserError`` naming ``field`` and the ID when it cannot be had)."""
    path = Path(name)
    match = HUB_ID.match(str(name))
    if path.exists() or match is None or ".." in str(name):
        return path
    repo, revision = match["repo"], match["revision"]
    from huggingface_hub import constants, snapshot_download

    if revision is not None and COMMIT.match(revision):
        try:  # a commit never changes: the cache answers without a network round trip
            return Path(
                snapshot_download(
                    repo, revision=revision, allow_patterns=list(FILES), local_files_only=True
                )
            )
        except Exception:  # noqa: BLE001 - not cached yet: fetched below
            pass
    fetch = f"`hf download {repo}" + (f" --revision {revision}`" if revision else "`")
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=list(FILES)))
    except Exception as exc:  # noqa: BLE001 - every failure is one line naming the ID
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        cache = constants.HF_HUB_CACHE
        if constants.HF_HUB_OFFLINE:
            why = "HF_HUB_OFFLINE is set"
        elif type(exc).__name__ in ("RepositoryNotFoundError", "RevisionNotFoundError"):
            raise UserError(
                f"{field}: folder {name} does not exist (relative paths start at {Path.cwd()}), "
                f"nor is it a model on the Hugging Face Hub ({reason}; a private model needs "
                "`hf auth login`)"
            ) from None
        else:
            why = f"the Hub could not be reached ({reason})"
        raise UserError(
            f"{field}: folder {name} does not exist (relative paths start at {Path.cwd()}), "
            f"and as a Hub ID it is not in the Hugging Face cache {cache} ({why}): fetch it "
            f"where there is network with {fetch} into the same HF_HOME"
        ) from None


def hub_id(folder: Path) -> tuple[str, str] | None:
    """``(org/name, commit)`` when ``folder`` is a snapshot of the Hugging Face cache, else
    ``None``."""
    parts = folder.absolute().parts
    if len(parts) < 3 or parts[-2] != "snapshots" or not parts[-3].startswith("models--"):
        return None
    org_name = parts[-3].removeprefix("models--").split("--")
    if len(org_name) != 2:
        return None
    return "/".join(org_name), parts[-1]


def model_source(folder: Path) -> str:
    """How a mergekit YAML names the folder: ``org/name@commit`` for a hub snapshot (that exact
    commit), else the path."""
    found = hub_id(folder)
    return f"{found[0]}@{found[1]}" if found else str(folder)


def model_name(folder: Path) -> str:
    """A short name: the ID's ``name`` for a hub snapshot, else the folder's own name."""
    found = hub_id(folder)
    return found[0].split("/")[1] if found else (folder.resolve().name or str(folder))
