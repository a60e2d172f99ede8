"""Reading a study back: the Pareto report, exporting a chosen trial, the dashboard.

``merge-search pareto`` builds one report dict (:func:`build_report`) from the study's trials:
the front (feasible trials only, one row per distinct plan), its knee, held-out re-scores, the
input checkpoints' and the uniform merge's scores, and the hypervolume history. The table, the
``--json`` output and the plots are all drawn from that dict.

Scores computed here are cached in the study so a second run is instant. Optuna does not allow
attributes to be added to finished trials, so the caches are study user attrs keyed by plan key:
``"heldout_scores"`` (``{"spec": <hash of the held-out tasks>, "scores": {plan_key: scores}}``)
and ``"baseline_scores"`` (search-split scores of inputs that have no seed trial).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.errors import UserError
from search.pareto import (
    best_point,
    dominates,
    hypervolume,
    hypervolume_history,
    knee_point,
    parse_prefer,
    pareto_front,
    prefer_point,
    reference_point,
)
from search.plan import MergePlan
from search.plots import counts_text

HELDOUT_ATTR = "heldout_scores"
BASELINE_ATTR = "baseline_scores"
DASHBOARD_GRAPH_ID = "merge-search-hypervolume"


@dataclass(frozen=True)
class Row:
    """One completed trial as the report sees it."""

    number: int
    values: tuple[float, ...]
    plan_key: str
    feasible: bool
    user_attrs: Mapping[str, Any]


@dataclass(frozen=True)
class StudyView:
    """A loaded study: its config, objective names and directions, and completed trials."""

    cfg: Any
    study: Any
    storage_url: str
    names: tuple[str, ...]
    directions: tuple[str, ...]
    rows: tuple[Row, ...]  # completed trials in trial order
    counts: Mapping[str, int]  # trial states -> how many

    def distinct_feasible(self) -> list[Row]:
        """Feasible rows, one per plan key (the lowest trial number wins)."""
        seen: dict[str, Row] = {}
        for row in self.rows:
            if row.feasible and row.plan_key not in seen:
                seen[row.plan_key] = row
        return list(seen.values())

    def front(self) -> list[Row]:
        """The Pareto front of :meth:`distinct_feasible`, in trial order."""
        rows = self.distinct_feasible()
        return [rows[i] for i in pareto_front([r.values for r in rows], self.directions)]

    def knee(self, front: Sequence[Row]) -> Row:
        """The knee of ``front`` (:func:`search.pareto.knee_point`; ties go to the lower trial number)."""
        front = sorted(front, key=lambda r: r.number)
        return front[knee_point([r.values for r in front], self.directions)]

    def require_completed(self) -> None:
        if not self.rows:
            raise UserError(
                f"study {self.cfg.name!r} in {self.storage_url}: no completed trials yet "
                f"({counts_text(self.counts)}); run `merge-search launch` first"
            )


def open_view(config: str | Path, storage: str | None = None) -> StudyView:
    """Load the config and its existing study (``UserError`` if either is missing)."""
    from search.config import load_config
    from search.study import load_study, open_storage

    cfg = load_config(config)
    url = storage or cfg.storage
    return view_of(cfg, load_study(cfg, open_storage(cfg, url)), url)


def view_of(cfg: Any, study: Any, url: str) -> StudyView:
    """The report's view of a loaded study (completed trials, feasibility from constraints)."""
    import optuna

    from search.study import redact

    directions = tuple(d.name.lower() for d in study.directions)
    names = tuple(study.metric_names or [o.name for o in cfg.objectives])
    counts: dict[str, int] = {}
    rows = []
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
        if t.state != optuna.trial.TrialState.COMPLETE:
            continue
        constraints = t.system_attrs.get("constraints") or t.user_attrs.get("constraints") or ()
        rows.append(Row(
            number=t.number,
            values=tuple(float(v) for v in t.values),
            plan_key=str(t.user_attrs.get("plan_key", f"trial-{t.number}")),
            feasible=all(c <= 0 for c in constraints),
            user_attrs=t.user_attrs,
        ))
    return StudyView(cfg, study, redact(url), names, directions, tuple(rows), counts)


# ----------------------------------------------------------------------------- scores and caches


def baseline_plans(pool_names: Sequence[str]) -> list[tuple[str, str, MergePlan]]:
    """(label, kind, plan) for the uniform linear average and each input checkpoint alone."""
    from search.methods import METHODS

    params = {p.name: p.default for p in METHODS["linear"].params}
    n = len(pool_names)
    out = [("uniform", "uniform", MergePlan.create("linear", [1.0 / n] * n, params))]
    for i, name in enumerate(pool_names):
        weights = [float(i == j) for j in range(n)]
        out.append((name, "single", MergePlan.create("linear", weights, params)))
    return out


def _scores_dict(scores: Any) -> dict[str, dict[str, float]]:
    return {"objectives": dict(scores.objectives), "tasks": dict(scores.tasks)}


def _heldout_spec_key(cfg: Any) -> str:
    payload = json.dumps(
        {"objectives": [o.model_dump(mode="json") for o in cfg.heldout_objectives()],
         "eval": cfg.eval_spec(heldout=True).model_dump(mode="json")},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def heldout_configured(cfg: Any) -> bool:
    return bool(cfg.eval.heldout)


def cached_heldout(view: StudyView) -> dict[str, dict]:
    """``{plan_key: scores}`` held-out scores cached for the config's current held-out tasks."""
    cache = view.study.user_attrs.get(HELDOUT_ATTR) or {}
    if not heldout_configured(view.cfg) or cache.get("spec") != _heldout_spec_key(view.cfg):
        return {}
    return dict(cache.get("scores") or {})


def score_heldout(
    view: StudyView, plans: Mapping[str, MergePlan], runtime_factory: Callable[..., Any] | None = None
) -> dict[str, dict]:
    """Held-out scores for ``{plan_key: plan}``: cached ones, the rest scored and cached one by one."""
    cache = cached_heldout(view)
    missing = {k: p for k, p in plans.items() if k not in cache}
    if missing:
        runtime = _runtime(view.cfg, True, runtime_factory)
        spec = _heldout_spec_key(view.cfg)
        for i, (key, plan) in enumerate(missing.items(), 1):
            print(f"held-out re-scoring {i}/{len(missing)} (plan {key})", file=sys.stderr, flush=True)
            scores, _, _ = runtime.score(plan)
            cache[key] = _scores_dict(scores)
            view.study.set_user_attr(HELDOUT_ATTR, {"spec": spec, "scores": cache})
    return {k: cache[k] for k in plans}


def find_baselines(
    view: StudyView, runtime_factory: Callable[..., Any] | None = None
) -> list[dict[str, Any]]:
    """The inputs' and the uniform merge's search scores: from seed trials, else scored here."""
    found: dict[str, dict[str, Any]] = {}
    for row in view.rows:
        tag = row.user_attrs.get("seed_trial")
        if not isinstance(tag, str) or (tag != "uniform" and not tag.startswith("single:")):
            continue
        kind, _, name = tag.partition(":")
        label = name if kind == "single" else "uniform"
        found.setdefault(label, {
            "label": label, "kind": kind, "trial": row.number, "plan_key": row.plan_key,
            "plan": MergePlan.from_dict(row.user_attrs["plan"]) if "plan" in row.user_attrs else None,
            "values": dict(zip(view.names, row.values, strict=True)),
        })
    pool_names = _pool_names(view)
    missing = []
    if any(label not in found for label in ("uniform", *pool_names)):  # (imports torch)
        missing = [(lb, kind, plan) for lb, kind, plan in baseline_plans(pool_names) if lb not in found]
    if missing:
        cache = dict(view.study.user_attrs.get(BASELINE_ATTR) or {})
        runtime = None
        for label, kind, plan in missing:
            if plan.key not in cache:
                runtime = runtime or _runtime(view.cfg, False, runtime_factory)
                print(f"scoring baseline {label!r} (no seed trial)", file=sys.stderr, flush=True)
                scores, _, _ = runtime.score(plan)
                cache[plan.key] = _scores_dict(scores)
                view.study.set_user_attr(BASELINE_ATTR, cache)
            objectives = cache[plan.key]["objectives"]
            found[label] = {"label": label, "kind": kind, "trial": None, "plan_key": plan.key,
                            "plan": plan, "values": {n: float(objectives[n]) for n in view.names}}
    order = ["uniform", *pool_names]
    return sorted(found.values(), key=lambda b: order.index(b["label"]) if b["label"] in order else 99)


def _pool_names(view: StudyView) -> list[str]:
    """Checkpoint names as the study recorded them (fingerprint), else folder basenames."""
    fingerprint = view.study.user_attrs.get("fingerprint") or {}
    names = [c["name"] for c in fingerprint.get("checkpoints", []) if isinstance(c, Mapping)]
    return names or [Path(p).name for p in view.cfg.checkpoints]


def _runtime(cfg: Any, heldout: bool, factory: Callable[..., Any] | None) -> Any:
    if factory is None:
        from search.worker import Runtime

        factory = Runtime.create
    return factory(cfg, heldout=heldout)


# ----------------------------------------------------------------------------- the report


def build_report(
    view: StudyView, *, heldout: bool = True, runtime_factory: Callable[..., Any] | None = None
) -> dict[str, Any]:
    """Everything ``merge-search pareto`` shows, as JSON-able data."""
    view.require_completed()
    names, directions = view.names, view.directions
    front = view.front()
    if not front:
        raise UserError(
            f"study {view.cfg.name!r}: none of the {len(view.rows)} completed trials meets the "
            f"constraints; nothing to report"
        )
    knee = view.knee(front)
    front.sort(key=lambda r: [-v if d == "maximize" else v for v, d in zip(r.values, directions)])
    baselines = find_baselines(view, runtime_factory)

    heldout_scores: dict[str, dict] = {}
    heldout_note = None
    if not heldout:
        heldout_note = "skipped (--no-heldout)"
    elif not heldout_configured(view.cfg):
        heldout_note = "no held-out tasks in the config (eval.heldout)"
    else:
        plans = {r.plan_key: MergePlan.from_dict(r.user_attrs["plan"])
                 for r in front if "plan" in r.user_attrs}
        plans.update({b["plan_key"]: b["plan"] for b in baselines if b["plan"] is not None})
        heldout_scores = score_heldout(view, plans, runtime_factory)

    def held(key: str) -> dict[str, float] | None:
        scores = heldout_scores.get(key)
        return {n: float(scores["objectives"][n]) for n in names} if scores else None

    front_rows = [{
        "trial": r.number,
        "values": dict(zip(names, r.values, strict=True)),
        "heldout": held(r.plan_key),
        "knee": r is knee,
        "plan_key": r.plan_key,
        "coefficients": r.user_attrs.get("coefficients"),
        "params": r.user_attrs.get("params"),
        "task_scores": r.user_attrs.get("task_scores"),
    } for r in front]
    for b in baselines:
        b["heldout"] = held(b["plan_key"])
        point = [b["values"][n] for n in names]
        b["dominated_by"] = [r.number for r in front if dominates(r.values, point, directions)]
        b["dominates"] = [r.number for r in front if dominates(point, r.values, directions)]
        b["on_front"] = any(b["trial"] == r.number or b["plan_key"] == r.plan_key for r in front)
        b.pop("plan")

    distinct = view.distinct_feasible()
    report: dict[str, Any] = {
        "study": view.cfg.name,
        "storage": view.storage_url,
        "objectives": [{"name": n, "direction": d} for n, d in zip(names, directions, strict=True)],
        "trial_counts": dict(view.counts),
        "knee_trial": knee.number,
        "front": front_rows,
        "baselines": baselines,
        "heldout_note": heldout_note,
        "trials": [{"trial": r.number, "values": dict(zip(names, r.values, strict=True)),
                    "feasible": r.feasible, "duplicate_of": r.user_attrs.get("duplicate_of")}
                   for r in view.rows],
        "hypervolume": None,
    }
    if len(names) > 1:
        values = [r.values for r in distinct]
        ref = reference_point(values, directions)
        history = hypervolume_history(values, directions, ref)
        report["hypervolume"] = {
            "reference": dict(zip(names, (float(x) for x in ref), strict=True)),
            "value": hypervolume([r.values for r in front], directions, ref),
            "history": [{"trial": r.number, "hypervolume": h} for r, h in zip(distinct, history)],
        }
    return report


def _save_to_dashboard(view: StudyView, report: Mapping[str, Any]) -> None:
    """Store the hypervolume history as a plotly figure shown by optuna-dashboard."""
    from optuna_dashboard import save_plotly_graph_object

    from search.plots import hypervolume_figure

    save_plotly_graph_object(view.study, hypervolume_figure(report), graph_object_id=DASHBOARD_GRAPH_ID)


def pareto_command(args: argparse.Namespace) -> int:
    """``merge-search pareto CONFIG [--json] [--plot FILE.png|FILE.html] [--no-heldout]``."""
    plot = None
    if args.plot:
        from search.plots import check_plot_path

        plot = check_plot_path(args.plot)
    view = open_view(args.config, args.storage)
    report = build_report(view, heldout=not args.no_heldout)
    if report["hypervolume"]:
        _save_to_dashboard(view, report)
    if plot is not None:
        from search.plots import write_plot

        write_plot(report, plot)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        from search.plots import format_report

        print(format_report(report))
        if plot is not None:
            print(f"plot written to {plot}")
    return 0


# ----------------------------------------------------------------------------- export


def pick_row(
    view: StudyView, *, trial: int | None = None, best: str | None = None,
    knee: bool = False, prefer: str | None = None,
) -> tuple[Row, str]:
    """The chosen completed trial and a phrase saying how it was chosen (``UserError`` if none)."""
    if trial is not None:
        by_number = {r.number: r for r in view.rows}
        if trial not in by_number:
            view.require_completed()
            raise UserError(
                f"--trial {trial}: no completed trial with that number in study {view.cfg.name!r}; "
                f"completed trials: {_ranges([r.number for r in view.rows])}"
            )
        return by_number[trial], f"trial {trial}"
    if best is not None and best not in view.names:
        raise UserError(f"--best {best}: unknown objective; objectives: {', '.join(view.names)}")
    weights = None
    if prefer is not None:
        try:
            weights = parse_prefer(prefer, view.names)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    view.require_completed()
    if best is not None:
        rows = view.distinct_feasible() or _no_feasible(view)
        row = rows[best_point([r.values for r in rows], view.directions, view.names.index(best))]
        return row, f"best on {best}"
    front = view.front() or _no_feasible(view)
    values = [r.values for r in front]
    if knee:
        return view.knee(front), "knee of the Pareto front"
    if weights is not None:
        row = front[prefer_point(values, view.directions, weights)]
        return row, f"preferred by {prefer}"
    raise UserError("export: give one of --trial N, --best OBJECTIVE, --knee, --prefer A=W,B=W")


def _no_feasible(view: StudyView) -> list[Row]:
    raise UserError(
        f"study {view.cfg.name!r}: none of the {len(view.rows)} completed trials meets the constraints"
    )


def _ranges(numbers: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    out: list[str] = []
    for n in sorted(numbers):
        if out and n == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def model_card_extra(view: StudyView, row: Row, how: str, config: str | Path) -> dict[str, Any]:
    """Sections added to the exported model card: scores, held-out scores, provenance."""
    scores = dict(zip(view.names, row.values, strict=True))
    scores.update(row.user_attrs.get("task_scores") or {})
    extra: dict[str, Any] = {"Search scores": scores}
    heldout = cached_heldout(view).get(row.plan_key)
    if heldout:
        extra["Held-out scores"] = {**heldout["objectives"], **heldout["tasks"]}
    sampler = view.cfg.sampler
    extra["Provenance"] = {
        "study": view.cfg.name,
        "storage": view.storage_url,
        "trial": row.number,
        "chosen as": how,
        "plan key": row.plan_key,
        "sampler": f"{sampler.name} (seed {sampler.seed}, options {sampler.options or {}})",
        "config file": str(Path(config).resolve()),
        "completed trials in the study": len(view.rows),
        "made with": "merge-search export",
    }
    extra["Checkpoint fingerprints"] = view.study.user_attrs.get("fingerprint")
    return extra


def export_command(args: argparse.Namespace) -> int:
    """``merge-search export CONFIG (--trial N | --best OBJ | --knee | --prefer A=W,..) --out DIR``."""
    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserError(f"--out {out}: already exists; choose a new folder or pass --force to replace it")
    view = open_view(args.config, args.storage)
    row, how = pick_row(view, trial=args.trial, best=args.best, knee=args.knee, prefer=args.prefer)
    if "plan" not in row.user_attrs:
        raise UserError(f"trial {row.number}: has no 'plan' user attr; it was not made by merge-search")
    plan = MergePlan.from_dict(row.user_attrs["plan"])

    from search.export import export_merge
    from search.pool import CheckpointPool

    cfg = view.cfg
    pool = CheckpointPool.open(cfg.checkpoints, cfg.base_model, device=cfg.resolved_device(),
                               dtype=cfg.dtype)
    recorded = view.study.user_attrs.get("fingerprint")
    if recorded is not None and _canonical_json(pool.fingerprint()) != _canonical_json(recorded):
        raise UserError(
            f"{args.config}: checkpoints: the files changed since study {cfg.name!r} scored them "
            f"(fingerprint differs); the export would not be the merge that was scored"
        )
    path = export_merge(plan, pool, out, force=args.force,
                        card_extra=model_card_extra(view, row, how, args.config))
    values = ", ".join(f"{n}={v:.4f}" for n, v in zip(view.names, row.values, strict=True))
    print(f"exported trial {row.number} ({how}; {values}) to {path}")
    return 0


def _canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, default=str)


# ----------------------------------------------------------------------------- dashboard


def dashboard_target(target: str) -> tuple[str, str | None]:
    """(storage URL, study name or None) from a config path or a storage URL."""
    if "://" in target:
        url, name = target, None
    else:
        from search.config import load_config

        cfg = load_config(target)
        url, name = cfg.storage, cfg.name
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        if not db.is_file():
            raise UserError(f"{target}: storage {url}: no such file; run `merge-search launch` first")
    return url, name


def dashboard_command(args: argparse.Namespace) -> int:
    """``merge-search dashboard CONFIG_OR_STORAGE_URL [--port N]``: optuna-dashboard on 127.0.0.1."""
    import optuna
    import sqlalchemy.exc

    from search.study import engine_url, redact

    url, name = dashboard_target(args.target)
    host = "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, args.port))
        except OSError:
            raise UserError(f"--port {args.port}: already in use on {host}; pick another port") from None
    try:
        storage = optuna.storages.RDBStorage(engine_url(url))
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{args.target}: cannot open storage {redact(url)}: {first}") from None
    from optuna_dashboard import run_server

    what = f"study {name!r} in " if name else ""
    print(f"optuna-dashboard: {what}{redact(url)} at http://{host}:{args.port}/dashboard/ "
          f"(Ctrl-C to stop)", flush=True)
    run_server(storage, host=host, port=args.port)
    return 0
