"""``merge-search merge CONFIG.yml OUT_DIR``: a mergekit YAML merged and exported."""

from __future__ import annotations

import argparse
import json


def add(sub: argparse._SubParsersAction) -> None:
    text = "Merge checkpoints from a mergekit-style YAML and export a Hugging Face folder."
    p = sub.add_parser("merge", help=text, description=text)
    p.add_argument(
        "config", help="mergekit YAML (merge_method, base_model, models, parameters, dtype)"
    )
    p.add_argument("out_dir", help="folder to write; refused if it exists unless --force")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16", "float64"),
        help="dtype of the written weights; the merge is computed in float32 and rounded once "
        "(default: the YAML's out_dtype, else its dtype, else the inputs' dtype)",
    )
    p.add_argument(
        "--pool",
        default="auto",
        choices=("auto", "device", "host", "disk"),
        help="where the checkpoints are held while merging: on the device, in host memory, or "
        "read from their files (default: auto, by free memory)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing OUT_DIR")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from search.export.folder import merge_from_yaml
    from search.strategies import merge_methods

    path, plan, pool = merge_from_yaml(
        args.config,
        args.out_dir,
        device=args.device,
        dtype=args.dtype,
        force=args.force,
        methods=merge_methods(),
        placement=args.pool,
    )
    written = json.loads((path / "config.json").read_text())["dtype"]
    print(
        f"wrote {path} ({plan.method}, {len(pool.names)} checkpoints, {written}, "
        f"pool {pool.placement})"
    )
    return 0
