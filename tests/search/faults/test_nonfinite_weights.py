"""Non-finite weights: a checkpoint holding NaN or Inf is refused by ``launch``, ``merge`` and
``export`` in one line naming the file and the tensor; a merge whose result overflows fails that
trial with its reason, and the study goes on to its budget."""

from __future__ import annotations

import shutil

import optuna
import torch
from safetensors.torch import load_file, save_file

from search.cli import main
from search.study.record import TrialRecord
from tests.search.conftest import VOCAB
from tests.search.study_fixtures import build_pool_and_tasks, cli, study_config, write_config

TENSOR = "model.layers.1.mlp.up_proj.weight"


def _set(file, tensor, fill) -> None:
    state = load_file(file)
    fill(state[tensor])
    save_file(state, file, metadata={"format": "pt"})


def _poisoned_pool(tiny_zoo, tmp_path):
    paths = build_pool_and_tasks(tmp_path, tiny_zoo)
    file = tmp_path / "pool" / "ft_c" / "model.safetensors"
    _set(file, TENSOR, lambda t: t.view(-1).__setitem__(7, float("nan")))
    return paths, file


def _one_error_line(err: str, expected: str) -> None:
    lines = err.strip().splitlines()
    assert lines[-1] == f"merge-search: error: {expected}", err
    assert "Traceback" not in err, err


def test_launch_refuses_a_checkpoint_with_nan(tiny_zoo, tmp_path):
    paths, file = _poisoned_pool(tiny_zoo, tmp_path)
    config = write_config(
        tmp_path / "s.yaml", study_config(paths, "nan", f"sqlite:///{tmp_path / 's.db'}")
    )
    proc = cli("launch", str(config), "--workers", "1", cwd=tmp_path)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err
    _one_error_line(
        err,
        f"{file}: tensor {TENSOR} holds NaN values; a checkpoint with non-finite weights "
        "(a diverged run?) cannot be merged",
    )
    assert not optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 's.db'}")  # no study made


def test_merge_refuses_a_checkpoint_with_inf_in_every_placement(tiny_zoo, tmp_path, capsys):
    folder = tmp_path / "ft_a"
    shutil.copytree(tiny_zoo.checkpoints[0], folder)
    file = folder / "model.safetensors"
    _set(file, "lm_head.weight", lambda t: t.view(-1).__setitem__(0, float("-inf")))
    config = tmp_path / "merge.yml"
    config.write_text(
        "merge_method: linear\nmodels:\n"
        f"  - model: {folder}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {tiny_zoo.checkpoints[2]}\n    parameters: {{weight: 0.5}}\n"
        "dtype: float32\n"
    )
    for placement in ("disk", "host"):
        out = tmp_path / f"out-{placement}"
        assert main(["merge", str(config), str(out), "--pool", placement]) == 2
        _one_error_line(
            capsys.readouterr().err,
            f"{file}: tensor lm_head.weight holds Inf "
            "values; a checkpoint with non-finite weights (a diverged run?) cannot "
            "be merged",
        )
        assert not out.exists()


def test_export_refuses_a_checkpoint_that_now_holds_nan(tiny_zoo, tmp_path, capsys):
    from search.engine.pool import CheckpointPool
    from search.study.config import load_config
    from search.study.space import SearchSpace
    from search.study.storage import create_or_resume, open_storage

    paths = build_pool_and_tasks(tmp_path, tiny_zoo)
    config = write_config(
        tmp_path / "s.yaml", study_config(paths, "exp", f"sqlite:///{tmp_path / 's.db'}")
    )
    cfg = load_config(config)
    pool = CheckpointPool.open(cfg.checkpoints, cfg.base_model)
    space = SearchSpace.build(cfg, pool.names)
    study, _ = create_or_resume(
        cfg, open_storage(cfg, create=True), space, pool.identity.fingerprint(), config
    )
    plan = space.plan(space.weight_values([1, 1, 1]))
    study.add_trial(
        optuna.trial.create_trial(
            values=[0.5, 3.0],
            user_attrs=TrialRecord(number=0, plan=plan.to_dict(), plan_key=plan.key).to_attrs(),
        )
    )
    file = tmp_path / "pool" / "ft_a" / "model.safetensors"
    _set(file, TENSOR, lambda t: t.view(-1).__setitem__(-1, float("nan")))
    out = tmp_path / "export"
    number = str(study.trials[-1].number)
    assert main(["export", str(config), "--trial", number, "--out", str(out)]) == 2
    _one_error_line(
        capsys.readouterr().err,
        f"{file}: tensor {TENSOR} holds NaN values; a checkpoint with non-finite weights "
        "(a diverged run?) cannot be merged",
    )
    assert not out.exists()


def test_a_merge_that_overflows_fails_its_trial_and_the_study_goes_on(tiny_zoo, tmp_path):
    """Every checkpoint is finite, but the row of a token no text uses is near float32's
    largest value in each fine-tune: a task-arithmetic merge overflows to Inf exactly when the
    weights sum past 1.05, a good part of the sampler's trials. Those fail with their reason
    (not retried); the budget is reached with complete trials."""
    paths = build_pool_and_tasks(tmp_path, tiny_zoo)
    row = VOCAB.index("z")  # in no task text
    big = torch.finfo(torch.float32).max / 1.05
    for name in ("ft_a", "ft_b", "ft_c"):
        for file in sorted((tmp_path / "pool" / name).glob("*.safetensors")):
            state = load_file(file)
            if "model.embed_tokens.weight" in state:
                state["model.embed_tokens.weight"][row] = big
                save_file(state, file, metadata={"format": "pt"})
    base = tmp_path / "pool" / "base" / "model.safetensors"
    _set(base, "model.embed_tokens.weight", lambda t: t[row].zero_())
    data = study_config(paths, "overflow", f"sqlite:///{tmp_path / 's.db'}")
    data["merge"] = {"method": "task_arithmetic", "weights": {"low": 0.0, "high": 1.0}}
    data["sampler"] = {"name": "random", "seed": 3}
    data["budget"] = {"n_trials": 6}
    data["seed_trials"] = []
    config = write_config(tmp_path / "s.yaml", data)
    proc = cli("launch", str(config), "--workers", "1", cwd=tmp_path)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    trials = optuna.load_study(study_name="overflow", storage=data["storage"]).trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(done) == 6
    assert failed, "no weights summed past the overflow: the test proves nothing"
    for t in failed:
        record = TrialRecord.from_trial(t)
        assert (
            record.failed == "the merge holds NaN or Inf values in tensor model.embed_tokens.weight"
        )
        assert sum(sum(c) for c in record.coefficients.values()) > 1.0
        assert "failed_trial" not in t.system_attrs  # not retried: it would fail again
    for t in done:
        assert sum(sum(c) for c in TrialRecord.from_trial(t).coefficients.values()) < 1.1
    assert f"{len(failed)} failed (trial {failed[0].number}: the merge holds NaN" in err
