"""Choosing a trial (`--trial/--best/--knee/--prefer`) and `merge-search export`."""

from __future__ import annotations

import dataclasses
import json

import optuna
import pytest

from search.cli import main
from search.errors import UserError
from search.report.choose import pick_row
from search.report.view import view_of
from search.study.record import TrialRecord
from tests.search.report_fixtures import MAX2, make_config, make_trial, write_study_config

KNEE = (
    "knee of the Pareto front (largest mean lead over the uniform merge, ahead on every objective)"
)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"knee": True}, 1),
        ({"best": "code"}, 2),
        ({"best": "instruct"}, 0),  # trial 4 scores higher but is infeasible
        ({"prefer": "instruct=1"}, 0),
        ({"prefer": "instruct=0.2,code=0.8"}, 2),  # 0.2, 0.625, 0.8 normalized
        ({"prefer": "instruct=0.5,code=0.5"}, 1),
        ({"trial": 4}, 4),  # asking by number may pick an infeasible trial
    ],
)
def test_pick_row(handmade, choice, expected):
    row, how = pick_row(handmade, **choice)
    assert row.number == expected
    assert how


@pytest.mark.parametrize(
    ("choice", "words"),
    [
        ({"trial": 6}, "completed trials: 0-5"),
        ({"trial": 99}, "completed trials: 0-5"),
        ({"best": "math"}, "objectives: instruct, code"),
        ({"prefer": "math=1"}, "instruct, code"),
        ({"prefer": "instruct=-1"}, ">= 0"),
    ],
)
def test_pick_row_errors_name_what_exists(handmade, choice, words):
    with pytest.raises(UserError, match=words):
        pick_row(handmade, **choice)


def test_pick_row_without_completed_or_feasible_trials():
    study = optuna.create_study(directions=MAX2)
    study.set_metric_names(["instruct", "code"])
    with pytest.raises(UserError, match="no completed trials"):
        pick_row(view_of(make_config(), study, "sqlite:///x.db"), knee=True)
    study.add_trial(make_trial([0.5, 0.5], "k", constraints=[1.0]))
    view = view_of(make_config(), study, "sqlite:///x.db")
    with pytest.raises(UserError, match="meets the constraints"):
        pick_row(view, knee=True)
    assert pick_row(view, trial=0)[0].number == 0


@pytest.mark.parametrize(
    ("flags", "trial", "how"),
    [
        (["--knee"], 3, "knee"),
        (["--trial", "0"], 0, "trial 0"),
        (["--best", "code"], 2, "best on code"),
        (["--prefer", "instruct=1"], 1, "preferred by instruct=1"),
    ],
)
def test_export_writes_a_loadable_model_with_scores_and_provenance(
    exportable, tmp_path, capsys, flags, trial, how
):
    config, study = exportable
    out = tmp_path / "merged"
    assert main(["export", str(config), *flags, "--out", str(out)]) == 0
    assert f"exported trial {trial} ({how}" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert f"| trial | {trial} |" in card
    assert f"| chosen as | {how}" in card
    values = study.trials[trial].values
    assert f"| instruct | {values[0]} |" in card and f"| code | {values[1]} |" in card
    assert f"| plan key | `{TrialRecord.from_trial(study.trials[trial]).plan_key}` |" in card
    assert "| study | exportable |" in card and "header_sha256" in card
    if flags == ["--knee"]:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(out)
        assert model.config.num_hidden_layers == 4


def test_export_refuses_an_existing_folder_and_forces_only_over_its_own(
    exportable, tmp_path, capsys
):
    config, _ = exportable
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    for force in ([], ["--force"]):
        assert main(["export", str(config), "--knee", "--out", str(out), *force]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"merge-search: error: {out}: ") and err.count("\n") == 1
        assert ("not written by merge-search" in err) == bool(force)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    out.rmdir()
    assert main(["export", str(config), "--knee", "--out", str(out)]) == 0
    assert main(["export", str(config), "--trial", "0", "--out", str(out), "--force"]) == 0
    assert (out / "config.json").is_file() and (out / "merge_search.json").is_file()
    assert "| trial | 0 |" in (out / "README.md").read_text()


def _snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    ("where", "words"),
    [
        (".", "contains an input checkpoint"),
        ("tasks", "is the tasks folder"),
        ("studies.db", "is the study's SQLite file"),
        ("base/sub", "lies inside the base model"),
    ],
)
def test_export_force_never_deletes_the_pool(
    exportable, tiny_zoo, demo_tasks_path, tmp_path, capsys, where, words
):
    """The issue's worst case: `export --out <the folder holding the pool> --force`."""
    import shutil
    from types import SimpleNamespace

    config, _ = exportable
    home = tmp_path / "pool"
    for path in (*tiny_zoo.checkpoints, tiny_zoo.base):
        shutil.copytree(path, home / path.name)
    shutil.copytree(demo_tasks_path, home / "tasks")
    shutil.copy(config.parent / "studies.db", home / "studies.db")
    zoo = SimpleNamespace(
        checkpoints=[home / p.name for p in tiny_zoo.checkpoints], base=home / "base"
    )
    copied = write_study_config(
        home, "exportable", zoo, seed_trials=[], tasks_path=str(home / "tasks")
    )
    (home / "merge_search.json").write_text('{"made_by": "merge-search"}')  # no help either
    (home / "mergekit_config.yml").write_text("merge_method: linear\n")
    before = _snapshot(home)
    out = home / where
    assert main(["export", str(copied), "--trial", "0", "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert _snapshot(home) == before


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (
            ["--trial", "7"],
            "--trial 7: no completed trial with that number in study 'exportable'; "
            "completed trials: 0-3",
        ),
        (["--best", "math"], "--best math: unknown objective; objectives: instruct, code"),
        (["--prefer", "math=1"], "expected OBJECTIVE=WEIGHT with OBJECTIVE one of instruct, code"),
    ],
)
def test_export_errors_are_one_line(exportable, tmp_path, capsys, flags, words):
    config, _ = exportable
    out = tmp_path / "never"
    assert main(["export", str(config), *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not out.exists()


def test_export_and_pareto_of_a_study_without_trials(tiny_zoo, tmp_path, capsys):
    from search.study.config import load_config
    from search.study.storage import open_storage

    config = write_study_config(tmp_path, "empty", tiny_zoo)
    assert main(["pareto", str(config)]) == 2  # no storage yet: nothing is created
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "studies.db").exists()
    cfg = load_config(config)
    optuna.create_study(
        study_name="empty", storage=open_storage(cfg, create=True), directions=["maximize"] * 2
    )
    for command in (
        ["pareto", str(config)],
        ["export", str(config), "--knee", "--out", str(tmp_path / "o")],
    ):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "study 'empty'" in err and "no completed trials yet" in err and err.count("\n") == 1
    assert main(["pareto", str(config), "--plot", str(tmp_path / "front.svg")]) == 2
    assert "expected a file name ending in .png or .html" in capsys.readouterr().err
    assert not (tmp_path / "front.svg").exists()


def test_export_knee_after_launch(launched, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    assert main(["pareto", str(launched), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    out = tmp_path / "knee"
    assert main(["export", str(launched), "--knee", "--out", str(out)]) == 0
    assert f"exported trial {report['knee_trial']} (knee" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert f"| trial | {report['knee_trial']} |" in card and "## Held-out scores" in card
    assert "c2_pick_heldout/acc" in card
    assert "## Search standard errors" in card and "## Held-out standard errors" in card
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 4


def test_knee_and_prefer_choose_on_the_held_out_re_scores(rechosen):
    from search.report.choose import heldout_values
    from search.report.view import open_view

    config, study = rechosen
    view = open_view(config)
    assert pick_row(view, knee=True)[0].number == 3  # on the search scores alone

    def no_runtime(*args, **kwargs):
        raise AssertionError("the front's held-out scores are cached")

    heldout = heldout_values(view, runtime_factory=no_runtime)
    row, how = pick_row(view, knee=True, heldout=heldout)
    assert (
        row.number == 4 and how == "knee of the Pareto front on held-out re-scores (eval.heldout)"
    )
    # with the uniform merge's held-out values as the reference, among the held-out front
    # (trials 1, 2, 4) the members ahead of it on every objective, the largest mean lead: over
    # (0.2, 0.05) the smallest leads are +0.05, -0.1, +0.3 (1 and 4 ahead, 4 the larger mean);
    # over (0.05, 0.55) they are -0.45, +0.05, -0.05 (only 2 ahead)
    row, how = pick_row(view, knee=True, heldout=heldout, reference=[0.2, 0.05])
    assert row.number == 4 and how == (f"{KNEE} on held-out re-scores (eval.heldout)")
    assert pick_row(view, knee=True, heldout=heldout, reference=[0.05, 0.55])[0].number == 2
    row, how = pick_row(view, prefer="instruct=1", heldout=heldout, reference=[0.2, 0.05])
    assert row.number == 1 and "largest weighted lead over the uniform merge" in how
    row, how = pick_row(view, prefer="instruct=0.5,code=0.5", heldout=heldout)
    assert row.number == 4 and how.endswith("on held-out re-scores (eval.heldout)")
    assert pick_row(view, prefer="instruct=1", heldout=heldout)[0].number == 1
    # trials still choose by number and by best search score
    assert pick_row(view, best="code", heldout=heldout)[0].number == 2


def test_export_knee_says_it_chose_on_held_out_and_reports_the_test_split(
    rechosen, tmp_path, capsys
):
    from search.report.choose import export_chosen

    config, study = rechosen
    out = tmp_path / "knee"
    assert main(["export", str(config), "--knee", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        f"exported trial 4 ({KNEE} on "
        "held-out re-scores (eval.heldout); "
        "instruct=0.5500, code=0.5500; held-out instruct=0.5000, code=0.5000)" in printed
    )
    assert (
        "test split (eval.test, examples per task: demo_instruct_test 20, demo_code_test 20): "
        "chosen trial 4" in printed
    )
    names = ["ft_a", "ft_b", "ft_c"]
    for label in ("uniform", *names):
        assert f"  {label}: mean=" in printed
    card = (out / "README.md").read_text()
    assert f"| chosen as | {KNEE} on held-out re-scores (eval.heldout) |" in card
    assert "## How it was chosen" in card and "the largest mean lead over it" in card
    assert "verdict, chosen − baseline on the test mean: over the uniform merge: " in card
    assert "verdict, chosen − baseline on the test mean: over the uniform merge: " in printed
    assert "## Held-out scores" in card and "| demo_code_heldout/exact_match | 0.5 |" in card
    assert "## Test split: chosen merge vs the uniform merge and the inputs" in card
    assert "| chosen: trial 4 |" in card and all(f"| {n} |" in card for n in names)

    # the test scores are cached in the study: a second export scores nothing
    def no_runtime(*args, **kwargs):
        raise AssertionError("the test scores are cached")

    row, how, _, view, comparison = export_chosen(
        config, tmp_path / "again", knee=True, runtime_factory=no_runtime
    )
    test = dataclasses.asdict(comparison)  # as a plain record, the way --json shows it
    assert row.number == 4 and test["chosen"]["trial"] == 4
    cached = optuna.load_study(study_name="rechosen", storage=view.cfg.storage).user_attrs
    assert set(cached["test_scores"]["scores"]) == {test["chosen"]["plan_key"]} | {
        b["plan_key"] for b in test["baselines"]
    }
    assert [b["label"] for b in test["baselines"]] == ["uniform", *names]
    for b in test["baselines"]:
        for n in ("instruct", "code"):
            assert b["diff"][n] == pytest.approx(
                test["chosen"]["objectives"][n] - b["objectives"][n]
            )
            assert 0.0 <= b["objectives"][n] <= 1.0
        assert b["examples"] == {"demo_instruct_test": 20, "demo_code_test": 20}
        assert b["diff"]["mean"] == pytest.approx(test["chosen"]["mean"] - b["mean"])
    single = next(b for b in test["baselines"] if b["label"] == "ft_b")
    assert single["trial"] is None


def test_without_held_out_tasks_the_knee_is_the_search_knee(exportable, tmp_path, capsys):
    config, _ = exportable
    assert main(["export", str(config), "--knee", "--out", str(tmp_path / "k")]) == 0
    printed = capsys.readouterr().out
    # the study's trial 0 is the uniform merge: the reference, found without scoring anything
    assert f"exported trial 3 ({KNEE}; " in (printed)
    assert "held-out" not in printed and "test split" not in printed


def test_export_into_a_full_or_read_only_folder_stops_before_any_re_scoring(
    rechosen, tmpfs, capsys
):
    from search.report.choose import export_chosen

    config, study = rechosen
    attrs = dict(study.user_attrs)

    def no_scoring(*args, **kwargs):
        raise AssertionError("re-scoring started before the output folder was checked")

    for options, words in (("size=16k", "for the merged model but"), ("ro", "Read-only")):
        point = tmpfs(options.replace("=", ""), options)
        with pytest.raises(UserError, match=words):
            export_chosen(config, point / "knee", knee=True, runtime_factory=no_scoring)
        assert list(point.iterdir()) == []
    assert (
        optuna.load_study(study_name=study.study_name, storage=study._storage).user_attrs == attrs
    )


def test_export_refuses_a_checkpoint_changed_in_the_middle(exportable, tiny_zoo, tmp_path, capsys):
    """Same size, mtime set back: the whole-content fingerprint still sees it."""
    import os
    import shutil
    from types import SimpleNamespace

    config, _ = exportable
    home = tmp_path / "pool"
    for path in (*tiny_zoo.checkpoints, tiny_zoo.base):
        shutil.copytree(path, home / path.name)
    shutil.copy(config.parent / "studies.db", home / "studies.db")
    zoo = SimpleNamespace(
        checkpoints=[home / p.name for p in tiny_zoo.checkpoints], base=home / "base"
    )
    copied = write_study_config(home, "exportable", zoo, seed_trials=[])
    out = tmp_path / "out"
    assert main(["export", str(copied), "--trial", "0", "--out", str(out)]) == 0
    file = home / "ft_a" / "model.safetensors"
    stat = file.stat()
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = tmp_path / "again"
    assert main(["export", str(copied), "--trial", "0", "--out", str(again)]) == 2
    err = capsys.readouterr().err
    assert "checkpoints[ft_a].content_xxh3_128" in err and err.count("\n") == 1
    assert not again.exists()
