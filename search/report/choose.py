"""Choosing a trial of a study and exporting its merge with a model card of where it came from.

``--knee`` and ``--prefer`` choose among the search split's Pareto front; when the study has
held-out tasks (``eval.heldout``) they judge the front members on their held-out re-scores
(:func:`heldout_values`: scored once, cached in the study as ``pareto`` does), so the choice is
made on data the sampler did not maximize over: the search split's best values are partly
lucky draws (selection noise), the held-out ones are not. With ``eval.test`` the chosen merge
and the inputs are then compared on a third split that neither the search nor the choice saw.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from search.engine.dtypes import resolve_dtype
from search.engine.plan import MergePlan
from search.engine.pool import CheckpointPool
from search.errors import UserError
from search.export.folder import check_output, check_room, export_bytes, export_merge
from search.report.frontier import KNEE_RULE, PREFER_RULE, best_point, parse_prefer, prefer_point
from search.report.scores import (
    Verdict,
    cached_heldout,
    compare_on_test,
    heldout_configured,
    score_heldout,
    uniform_values,
)
from search.report.table import lead_text, verdict_text
from search.report.view import Row, StudyView, open_view
from search.strategies import get_method
from search.study.notes import study_note, write_study_note
from search.study.storage import FINGERPRINT_ATTR, SPACE_ATTR, check_fingerprint, sqlite_path
from search.study.strategy import offered

ON_HELDOUT = "on held-out re-scores (eval.heldout)"


def heldout_values(
    view: StudyView, runtime_factory: Callable[..., Any] | None = None
) -> dict[str, list[float]] | None:
    """``{plan_key: held-out objective values}`` of every front member with a plan (scored and
    cached when missing); ``None`` when the study has no held-out tasks."""
    if not heldout_configured(view.cfg):
        return None
    plans = {r.plan_key: MergePlan.from_dict(r.record.plan) for r in view.front() if r.record.plan}
    scores = score_heldout(view, plans, runtime_factory)
    return {k: [float(s.objectives[n]) for n in view.names] for k, s in scores.items()}


def pick_row(
    view: StudyView,
    *,
    trial: int | None = None,
    best: str | None = None,
    knee: bool = False,
    prefer: str | None = None,
    heldout: Mapping[str, Sequence[float]] | None = None,
    reference: Sequence[float] | None = None,
) -> tuple[Row, str]:
    """The chosen completed trial and a phrase saying how it was chosen (``UserError`` if none).

    ``heldout`` (``{plan_key: values}``, from :func:`heldout_values`): ``knee`` and ``prefer``
    judge the front members on these values instead of their search scores. ``reference``: the
    uniform merge's values on the same split (:func:`~search.report.scores.uniform_values`);
    ``knee`` and ``prefer`` maximize the smallest (weighted) lead over it
    (:func:`~search.report.frontier.knee_point`); without it they fall back to normalizing over
    the front.
    """
    if trial is not None:
        by_number = {r.number: r for r in view.rows}
        if trial not in by_number:
            view.require_completed()
            raise UserError(
                f"--trial {trial}: no completed trial with that number in study {view.cfg.name!r}; "
                f"completed trials: {_ranges([r.number for r in view.rows])}"
            )
        row = by_number[trial]
        if row.record.stopped:
            raise UserError(
                f"--trial {trial}: stopped early (trial {row.record.stopped_by} beat it), so its "
                "scores are partial; choose a "
                "trial scored in full (see `merge-search pareto`)"
            )
        return row, f"trial {trial}"
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
    rescored = bool(heldout) and any(r.plan_key in heldout for r in front)
    lead = (
        " (largest mean lead over the uniform merge, ahead on every objective)"
        if reference is not None
        else ""
    )
    if knee:
        if rescored:
            row = view.knee_on(front, heldout, reference)
            return row, f"knee of the Pareto front{lead} {ON_HELDOUT}"
        return view.knee(front, reference), f"knee of the Pareto front{lead}"
    if weights is not None:
        lead = lead.replace("largest mean lead", "largest weighted lead")
        if rescored:
            row = view.prefer_on(front, heldout, weights, reference)
            return row, f"preferred by {prefer}{lead} {ON_HELDOUT}"
        row = front[prefer_point(values, view.directions, weights, reference)]
        return row, f"preferred by {prefer}{lead}"
    raise UserError("export: give one of --trial N, --best OBJECTIVE, --knee, --prefer A=W,B=W")


def _no_feasible(view: StudyView) -> list[Row]:
    raise UserError(
        f"study {view.cfg.name!r}: none of the {len(view.rows)} completed trials meets the "
        "constraints"
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


def model_card_extra(
    view: StudyView,
    row: Row,
    how: str,
    config: str | Path,
    test: Verdict | None = None,
) -> dict[str, Any]:
    """Sections added to the exported model card: scores, held-out scores, the test split
    comparison (``test``: :func:`~search.report.scores.compare_on_test`), provenance."""
    scores = dict(zip(view.names, row.values, strict=True))
    scores.update(row.record.task_scores)
    extra: dict[str, Any] = {"Search scores": scores}
    errors = {**row.record.stderr, **row.record.task_stderr}
    if errors:
        extra["Search standard errors"] = errors
    heldout = cached_heldout(view).get(row.plan_key)
    if heldout:
        extra["Held-out scores"] = {**heldout.objectives, **heldout.tasks}
        held_errors = {**heldout.stderr, **heldout.task_stderr}
        if held_errors:
            extra["Held-out standard errors"] = held_errors
    if "knee" in how or "preferred" in how:
        rule = KNEE_RULE if "knee" in how else PREFER_RULE
        extra["How it was chosen"] = f"`export` chose {rule}."
    if test:
        extra["Test split: chosen merge vs the uniform merge and the inputs"] = comparison_table(
            test, view.names
        )
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
    extra["Checkpoint fingerprints"] = view.study.user_attrs.get(FINGERPRINT_ATTR)
    return extra


def comparison_table(test: Verdict, names: Sequence[str]) -> str:
    """The test comparison as a markdown table: the chosen merge, then each baseline with the
    chosen merge's lead over it (examples per task under the table)."""
    chosen = test.chosen
    head = ["", *names, "mean", *(f"chosen − it: {n}" for n in names), "chosen − it: mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cells = [f"chosen: trial {chosen.trial}", *(f"{chosen.objectives[n]:.4f}" for n in names)]
    lines.append("| " + " | ".join([*cells, f"{chosen.mean:.4f}"] + [""] * (len(names) + 1)))
    for b in test.baselines:
        diff = [lead_text(b, n) for n in (*names, "mean")]
        cells = [b.label, *(f"{b.objectives[n]:.4f}" for n in names), f"{b.mean:.4f}"]
        lines.append("| " + " | ".join([*cells, *diff]) + " |")
    examples = ", ".join(f"{k} {v}" for k, v in chosen.examples.items())
    if examples:
        lines += ["", f"Examples per task: {examples}."]
    lines += ["", verdict_text(test) + " (paired standard errors: the same test examples)."]
    return "\n".join(lines)


def note_verdict(view: StudyView, test: Verdict, how: str) -> None:
    """The study's optuna-dashboard note again: the objectives, then the test split's verdict
    on the merge chosen as ``how`` (:mod:`search.study.notes`)."""
    verdict = (
        f"## Test split: trial {test.chosen.trial} ({how}) vs the uniform merge and the inputs"
        f"\n\n{comparison_table(test, view.names)}"
    )
    write_study_note(view.study, study_note(view.cfg, verdict))


def export_chosen(
    config: str | Path,
    out: str | Path,
    *,
    storage: str | None = None,
    trial: int | None = None,
    best: str | None = None,
    knee: bool = False,
    prefer: str | None = None,
    force: bool = False,
    dtype: str | None = None,
    runtime_factory: Callable[..., Any] | None = None,
) -> tuple[Row, str, Path, StudyView, Verdict | None]:
    """Pick a trial of the study (see :func:`pick_row`) and export its merge to ``out``.

    Writes to the study: the held-out and test re-scores it needs are cached in its user attrs
    (:mod:`search.report.scores`).

    ``--knee`` / ``--prefer`` use the front's held-out re-scores when the study has held-out
    tasks (:func:`heldout_values`); with ``eval.test`` the chosen merge and the inputs are
    scored on the test split (cached) and compared in the model card. The weights are written
    in ``dtype`` (default: the checkpoints' own, whatever dtype the study merged in).

    Returns:
        ``(row, how it was chosen, the folder written, the study view, the test comparison or
        None)``.

    Raises:
        UserError: ``out`` exists without ``force``, no such trial, or the checkpoints changed
            since the study scored them; all before anything is written.
    """

    view = open_view(config, storage)
    cfg = view.cfg
    protected = study_inputs(cfg, config, storage)
    out = check_output(out, force=force, protected=protected)
    row, how = pick_row(view, trial=trial, best=best, knee=knee, prefer=prefer)
    pool = CheckpointPool.open(
        cfg.checkpoints, cfg.base_model, device=cfg.device, dtype=cfg.dtype, placement=cfg.pool
    )
    check_fingerprint(
        view.study,
        pool.identity.fingerprint(),
        config,
        f"study {cfg.name!r} scored other files; the export would not be the merge that was scored",
    )
    out_dtype = resolve_dtype(dtype) if dtype is not None else pool.input_dtype
    check_room(out, export_bytes(pool, out_dtype))  # before any re-scoring
    if knee or prefer is not None:  # judged again on the held-out split, when there is one
        heldout = heldout_values(view, runtime_factory)
        split = "heldout" if heldout else "search"
        reference = uniform_values(view, split, runtime_factory)
        row, how = pick_row(view, knee=knee, prefer=prefer, heldout=heldout, reference=reference)
    if row.record.plan is None:
        raise UserError(
            f"trial {row.number}: has no recorded plan; it was not made by merge-search"
        )
    plan = MergePlan.from_dict(row.record.plan)
    test = compare_on_test(view, row, how, runtime_factory)
    _prepare_export(view, pool, config)
    path = export_merge(
        plan,
        pool,
        out,
        force=force,
        dtype=out_dtype,
        card_extra=model_card_extra(view, row, how, config, test),
        protected=protected,
        method=get_method(cfg.merge.method),
    )
    if test is not None:
        note_verdict(view, test, how)
    return row, how, path, view, test


def _prepare_export(view: StudyView, pool: CheckpointPool, config: str | Path) -> None:
    """What the study's strategies need for its merge (e.g. the extras it merged with, from
    their cache); refused when their data changed since the study (their signature entries)."""
    recorded = view.study.user_attrs.get(SPACE_ATTR) or {}
    for strategy in view.cfg.strategies:
        offers = strategy.offers()
        entries = offers.signature() if offers.signature is not None else {}
        for key, value in entries.items():
            if key in recorded and recorded[key] != value:
                raise UserError(
                    f"{config}: {key}: changed since study {view.cfg.name!r} (recorded "
                    f"{recorded[key]}); the export would not be the merge that was scored"
                )
        if offers.prepare_export is not None:
            offers.prepare_export(pool)


def study_inputs(
    cfg: Any, config: str | Path, storage: str | None = None
) -> list[tuple[str, str | Path]]:
    """What an export of the study must keep clear of, as ``(what, path)``: the checkpoints,
    the base, the tasks folder, the study's SQLite file (and its lock), what its strategies
    keep (a cache), the config (see :func:`search.export.folder.check_output`)."""
    items: list[tuple[str, str | Path]] = [("an input checkpoint", p) for p in cfg.checkpoints]
    if cfg.base_model is not None:
        items.append(("the base model", cfg.base_model))
    if cfg.tasks_path is not None:
        items.append(("the tasks folder", cfg.tasks_path))
    db = sqlite_path(storage or cfg.storage)
    if db is not None:
        items += [("the study's SQLite file", db), ("the study's lock file", Path(f"{db}.lock"))]
    items += [item for kept in offered(cfg.strategies, "protected") for item in kept()]
    items.append(("the study config", config))
    return items
