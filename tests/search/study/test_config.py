"""The study config: every bad field is one clear line, exit code 2, and nothing is written."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from evaluators.spec import EvalSpec
from search.cli import main
from search.errors import UserError
from search.study.config import load_config


def good_config() -> dict[str, Any]:
    return {
        "name": "cfgtest",
        "checkpoints": ["pool/a", "pool/b"],
        "base_model": "pool/base",
        "merge": {
            "method": "ties",
            "layer_groups": 2,
            "weights": {"low": 0.0, "high": 1.0, "normalize": True},
            "params": {"density": {"low": 0.2, "high": 0.9}, "lambda": 1.0},
        },
        "objectives": [
            {"name": "instr", "tasks": [{"task": "demo_instruct", "metric": "exact_match"}]},
            {"name": "code", "tasks": [{"task": "demo_code", "metric": "exact_match"}]},
        ],
        "constraints": [{"objective": "code", "min": 0.1}],
        "tasks_path": "tasks",
        "eval": {
            "limit": 4,
            "heldout": {"demo_instruct": "demo_instruct_h", "demo_code": "demo_code_h"},
        },
        "sampler": {"name": "nsga2", "seed": 0, "options": {"population_size": 8}},
        "budget": {"n_trials": 10},
    }


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the folders the config names (contents do not matter here)."""
    for sub in ("pool/a", "pool/b", "pool/base", "tasks"):
        (tmp_path / sub).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(workdir: Path, data: Any, name: str = "study.yaml") -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_good_config_loads_with_defaults(workdir: Path) -> None:
    cfg = load_config(write(workdir, good_config()))
    assert cfg.storage == "sqlite:///studies/cfgtest.db"
    assert cfg.directions == ["maximize", "maximize"]
    assert cfg.seed_trials == ("uniform", "singles")
    assert cfg.merge.params["density"].low == 0.2
    held = cfg.heldout_objectives()
    assert [t.task for o in held for t in o.tasks] == ["demo_instruct_h", "demo_code_h"]
    assert cfg.constraint_values({"instr": 0.5, "code": 0.3}) == pytest.approx([0.1 - 0.3])
    assert cfg.eval_spec().limit == 4 and cfg.eval_spec().tasks_path == Path("tasks")


def test_the_eval_section_is_the_evaluators_spec_with_the_study_tasks_folder(workdir: Path) -> None:
    """One declaration per setting: every EvalSpec field is read from ``eval`` as it is; the
    tasks folder is the top-level ``tasks_path`` only, and the study's own fields (``test``,
    strategy sections) stay out of what the evaluators get and of the recorded config."""
    data = good_config()
    data["eval"].update(batch_size=3, max_length=64, system_instruction="Be brief.")
    cfg = load_config(write(workdir, data))
    assert isinstance(cfg.eval, EvalSpec)
    spec = cfg.eval_spec()
    assert type(spec) is EvalSpec
    expected = {**cfg.eval.model_dump(exclude={"test", "racing"}), "tasks_path": Path("tasks")}
    assert spec.model_dump() == expected
    assert (spec.batch_size, spec.max_length, spec.system_instruction) == (3, 64, "Be brief.")
    assert "tasks_path" not in cfg.to_json()["eval"] and "test" in cfg.to_json()["eval"]
    data["eval"]["tasks_path"] = "tasks"
    with pytest.raises(UserError) as refused:
        load_config(write(workdir, data))
    line = str(refused.value)
    assert "eval.tasks_path: unknown field; expected one of: limit, batch_size, " in line
    assert line.count("tasks_path") == 1


def test_overrides_replace_budget_and_storage(workdir: Path) -> None:
    cfg = load_config(write(workdir, good_config()), n_trials=3, storage="postgresql://u@h:5432/db")
    assert cfg.budget.n_trials == 3 and cfg.storage == "postgresql://u@h:5432/db"


Mutate = Callable[[dict], Any]

BAD: list[tuple[str, Mutate, str]] = [
    (
        "unknown-top",
        lambda d: d.update(nam="x"),
        "nam: unknown field; expected one of: name, storage",
    ),
    ("name", lambda d: d.update(name="a b"), "name: expected letters, digits"),
    ("name-missing", lambda d: d.pop("name"), "name: required field is missing"),
    (
        "checkpoints-empty",
        lambda d: d.update(checkpoints=[]),
        "checkpoints: expected at least 1 entry",
    ),
    ("checkpoints-str", lambda d: d.update(checkpoints="pool/a"), "checkpoints: expected a list"),
    (
        "checkpoint-missing",
        lambda d: d["checkpoints"].append("pool/zz"),
        "checkpoints[2]: folder pool/zz does not exist",
    ),
    (
        "base-missing",
        lambda d: d.update(base_model="nowhere"),
        "base_model: folder nowhere does not exist",
    ),
    (
        "tasks-path",
        lambda d: d.update(tasks_path="no/tasks"),
        "tasks_path: folder no/tasks does not exist",
    ),
    (
        "method",
        lambda d: d["merge"].update(method="soup"),
        "merge.method: unknown method 'soup'; expected one of: linear,",
    ),
    (
        "layer-groups",
        lambda d: d["merge"].update(layer_groups=0),
        "merge.layer_groups: Input should be greater than or equal to 1",
    ),
    (
        "weights-order",
        lambda d: d["merge"].update(weights={"low": 1, "high": 0}),
        "merge.weights: expected low < high",
    ),
    (
        "weights-field",
        lambda d: d["merge"].update(weights={"lo": 0}),
        "merge.weights.lo: unknown field; expected one of: low, high, normalize",
    ),
    (
        "normalize-unsupported",
        lambda d: d["merge"].update(method="task_arithmetic", params={}),
        "merge.weights.normalize: method 'task_arithmetic' has no 'normalize' parameter",
    ),
    (
        "param-unknown",
        lambda d: d["merge"].update(params={"densty": 0.3}),
        (
            "merge.params.densty: method 'ties' has no parameter 'densty'; "
            "expected one of: density, lambda"
        ),
    ),
    (
        "param-range-outside",
        lambda d: d["merge"].update(params={"density": {"low": 0.0, "high": 2.0}}),
        "merge.params.density: range [0.0, 2.0] must lie inside the method's range [0.01, 1.0]",
    ),
    (
        "param-fixed-outside",
        lambda d: d["merge"].update(params={"lambda": 5}),
        "merge.params.lambda: expected a value in [0.0, 2.0]",
    ),
    (
        "param-type",
        lambda d: d["merge"].update(params={"density": "abc"}),
        "merge.params.density: expected a number",
    ),
    (
        "param-range-half",
        lambda d: d["merge"].update(params={"density": {"low": 0.5}}),
        "merge.params.density: high: required",
    ),
    (
        "param-normalize",
        lambda d: d["merge"].update(params={"normalize": False}),
        "merge.params.normalize: set it as merge.weights.normalize",
    ),
    ("needs-base", lambda d: d.pop("base_model"), "base_model: method 'ties' needs a base model"),
    (
        "slerp-count",
        lambda d: (
            d["merge"].update(method="slerp", weights={}, params={"t": {"low": 0, "high": 1}}),
            d.update(checkpoints=["pool/a", "pool/b", "pool/base"]),
        ),
        "checkpoints: method 'slerp' merges exactly 2 checkpoints (got 3)",
    ),
    (
        "slerp-nothing",
        lambda d: d["merge"].update(method="slerp", weights={}, params={}),
        "merge.params: method 'slerp' ignores the weights; give a {low, high} range for one of: t",
    ),
    (
        "objectives-empty",
        lambda d: d.update(objectives=[]),
        "objectives: expected at least 1 entry",
    ),
    (
        "objective-dup",
        lambda d: d["objectives"][1].update(name="instr"),
        "objectives[1].name: 'instr' is used twice",
    ),
    (
        "objective-direction",
        lambda d: d["objectives"][0].update(direction="up"),
        "objectives[0].direction: Input should be 'maximize' or 'minimize'",
    ),
    (
        "objective-tasks",
        lambda d: d["objectives"][0].update(tasks=[]),
        "objectives[0]: objective 'instr': lm_eval objectives need",
    ),
    (
        "task-field",
        lambda d: d["objectives"][0]["tasks"][0].update(metrc="x"),
        (
            "objectives[0].tasks[0].metrc: unknown field; "
            "expected one of: task, metric, weight, num_fewshot, limit"
        ),
    ),
    (
        "perplexity-file",
        lambda d: (
            d["objectives"][0].update(evaluator="perplexity", tasks=[], data="none.txt"),
            d["eval"].update(heldout={}),
        ),
        "objectives[0].data: file none.txt does not exist",
    ),
    (
        "constraint-objective",
        lambda d: d.update(constraints=[{"objective": "nope", "min": 1}]),
        "constraints[0].objective: unknown objective 'nope'; expected one of: instr, code",
    ),
    (
        "constraint-bounds",
        lambda d: d.update(constraints=[{"objective": "code"}]),
        "constraints[0]: expected 'min', 'max' or both",
    ),
    (
        "eval-limit",
        lambda d: d["eval"].update(limit=0),
        "eval.limit: Input should be greater than or equal to 1",
    ),
    (
        "eval-multiturn",
        lambda d: d["eval"].update(fewshot_as_multiturn=True),
        "eval.fewshot_as_multiturn: true needs eval.apply_chat_template",
    ),
    (
        "eval-chat-name",
        lambda d: d["eval"].update(apply_chat_template=" "),
        "eval.apply_chat_template: expected true, false or a chat template name",
    ),
    (
        "eval-max-length",
        lambda d: d["eval"].update(max_length=1),
        "eval.max_length: Input should be greater than or equal to 2",
    ),
    (
        "task-gen-kwargs",
        lambda d: d["objectives"][0]["tasks"][0].update(gen_kwargs={"max_length": 5}),
        "objectives[0].tasks[0].gen_kwargs: gen_kwargs.max_length: use max_gen_toks",
    ),
    (
        "heldout-key",
        lambda d: d["eval"]["heldout"].update(nope="x"),
        "eval.heldout.nope: not a task of any objective",
    ),
    (
        "test-key",
        lambda d: d["eval"].update(test={"demo_code": "t1", "demo_instruct": "t2", "nope": "x"}),
        "eval.test.nope: not a task of any objective",
    ),
    (
        "test-partial",
        lambda d: d["eval"].update(test={"demo_instruct": "t2"}),
        "eval.test: no test task for 'demo_code'; map every objective task or none",
    ),
    (
        "budget-examples",
        lambda d: d["budget"].update(examples=0),
        "budget.examples: Input should be greater than or equal to 1",
    ),
    (
        "parametrization",
        lambda d: d["merge"]["weights"].update(parametrization="sphere"),
        "merge.weights.parametrization: Input should be 'simplex' or 'independent'",
    ),
    (
        "simplex-unnormalized",
        lambda d: d["merge"]["weights"].update(normalize=False, parametrization="simplex"),
        "merge.weights.parametrization: simplex needs a method that normalizes the weights",
    ),
    (
        "simplex-bounds",
        lambda d: d["merge"]["weights"].update(high=2.0),
        "merge.weights.high: low/high bound independent weights only",
    ),
    (
        "heldout-partial",
        lambda d: d["eval"]["heldout"].pop("demo_code"),
        "eval.heldout: no held-out task for 'demo_code'",
    ),
    (
        "sampler-name",
        lambda d: d["sampler"].update(name="bayes"),
        (
            "sampler.name: unknown sampler 'bayes'; "
            "expected one of: tpe, nsga2, nsga3, gp, cmaes, random, qmc"
        ),
    ),
    (
        "cmaes-multi",
        lambda d: (d["sampler"].update(name="cmaes", options={}), d.update(constraints=[])),
        "sampler.name: cmaes optimizes one objective but the config has 2",
    ),
    (
        "sampler-option",
        lambda d: d["sampler"].update(options={"popsize": 3}),
        "sampler.options.popsize: unknown option for nsga2",
    ),
    (
        "sampler-option-value",
        lambda d: d["sampler"].update(options={"population_size": 1}),
        "sampler.options: nsga2 refused them: `population_size` must be greater than or equal to 2",
    ),
    (
        "sampler-seed-option",
        lambda d: d["sampler"].update(options={"seed": 1}),
        "sampler.options.seed: set by merge-search",
    ),
    (
        "constraints-unsupported",
        lambda d: d["sampler"].update(name="random", options={}),
        "sampler.name: random ignores constraints",
    ),
    (
        "n-trials",
        lambda d: d["budget"].update(n_trials=0),
        "budget.n_trials: Input should be greater than or equal to 1",
    ),
    (
        "timeout",
        lambda d: d["budget"].update(timeout_s=-1),
        "budget.timeout_s: Input should be greater than 0",
    ),
    (
        "heartbeat",
        lambda d: d.update(workers={"heartbeat_s": 0}),
        "workers.heartbeat_s: Input should be greater than or equal to 1",
    ),
    (
        "threads",
        lambda d: d.update(workers={"threads": 0}),
        "workers.threads: Input should be greater than or equal to 1",
    ),
    (
        "seed-trials",
        lambda d: d.update(seed_trials=["best"]),
        "seed_trials[0]: Input should be 'uniform', 'singles' or 'fw'",  # fw: Frank-Wolfe proposals
    ),
    (
        "device",
        lambda d: d.update(device="tpu"),
        "device: expected auto, cpu, cuda or cuda:N (got 'tpu')",
    ),
    (
        "dtype",
        lambda d: d.update(dtype="int8"),
        "dtype: Input should be 'float32', 'bfloat16' or 'float16'",
    ),
    (
        "pool",
        lambda d: d.update(pool="ram"),
        "pool: Input should be 'auto', 'device', 'host' or 'disk'",
    ),
    (
        "storage",
        lambda d: d.update(storage="redis://localhost"),
        "storage: expected sqlite:///FILE.db or postgresql://",
    ),
    (
        "storage-memory",
        lambda d: d.update(storage="sqlite:///:memory:"),
        "storage: expected sqlite:///FILE.db",
    ),
    # Fisher merging and Frank-Wolfe proposals
    (
        "fisher-without-calibration",
        lambda d: d.update(merge={"method": "fisher"}),
        "merge.fisher: method 'fisher' needs calibration data",
    ),
    (
        "fisher-two-sources",
        lambda d: d.update(
            merge={"method": "fisher", "fisher": {"data": "x.txt", "tasks": "from_objectives"}}
        ),
        "merge.fisher: expected exactly one of data",
    ),
    (
        "fisher-missing-file",
        lambda d: d.update(merge={"method": "fisher", "fisher": {"data": "calib.jsonl"}}),
        "merge.fisher.data: file calib.jsonl does not exist",
    ),
    (
        "fisher-zero-examples",
        lambda d: d.update(
            merge={"method": "fisher", "fisher": {"tasks": "from_objectives", "examples": 0}}
        ),
        "merge.fisher.examples: Input should be greater than or equal to 1",
    ),
    (
        "fisher-negative-weights",
        lambda d: d.update(
            merge={
                "method": "fisher",
                "fisher": {"tasks": "from_objectives"},
                "weights": {"low": -1.0, "high": 1.0},
            }
        ),
        "merge.weights.low: method 'fisher' needs weights >= 0.0",
    ),
    (
        "fisher-data-on-linear",
        lambda d: d.update(merge={"method": "linear", "fisher": {"tasks": "from_objectives"}}),
        "merge.fisher: method 'linear' reads no Fishers",
    ),
    (
        "fw-on-ties",
        lambda d: d.update(seed_trials=["uniform", "fw"]),
        "seed_trials: Frank-Wolfe proposals need a merge that is Σ w_i θ_i",
    ),
    (
        "fw-weight-floor",
        lambda d: d.update(
            merge={
                "method": "linear",
                "weights": {"low": 0.1, "high": 1.0, "parametrization": "independent"},
            },
            seed_trials=["fw"],
        ),
        "merge.weights.low: Frank-Wolfe points give checkpoints weight 0",
    ),
    (
        "fw-steps",
        lambda d: d.update(fw={"steps": 0}),
        "fw.steps: Input should be greater than or equal to 1",
    ),
    (
        "fw-sampler-constraints",
        lambda d: d.update(sampler={"name": "fw"}),
        "sampler.name: fw ignores constraints",
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), [pytest.param(m, e, id=i) for i, m, e in BAD])
def test_bad_field_is_one_line_exit_2_nothing_written(
    workdir: Path, capsys: pytest.CaptureFixture[str], mutate: Mutate, expected: str
) -> None:
    data = copy.deepcopy(good_config())
    mutate(data)
    path = write(workdir, data)
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))

    assert main(["launch", str(path)]) == 2

    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"merge-search: error: {path}: ")
    assert expected in lines[0]
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before  # nothing written


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: [unclosed\n", "not valid YAML: line 2"),
        ("- just\n- a list\n", "expected a mapping of config fields"),
    ],
    ids=["yaml-syntax", "not-a-mapping"],
)
def test_bad_file_is_one_line(
    workdir: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = write(workdir, text)
    assert main(["launch", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err
    assert not (workdir / "studies").exists()


def test_missing_file_and_bad_flags(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["launch", "nope.yaml"]) == 2
    assert "nope.yaml: config file not found" in capsys.readouterr().err
    path = write(workdir, good_config())
    assert main(["launch", str(path), "--storage", "mysql://x"]) == 2
    assert "storage: expected sqlite:///FILE.db" in capsys.readouterr().err
    assert main(["launch", str(path), "--workers", "0"]) == 2
    assert "--workers: expected at least 1" in capsys.readouterr().err
    assert not (workdir / "studies").exists()


def test_the_fw_sampler_budget_is_its_paths(workdir: Path) -> None:
    data = good_config()
    data.update(merge={"method": "linear"}, sampler={"name": "fw"}, constraints=[])
    data["fw"] = {"preferences": 4}
    cfg = load_config(write(workdir, data))
    assert cfg.n_trials == 4 and [f.name for f in cfg.strategies] == ["frank_wolfe"]
    assert cfg.budget.n_trials == good_config()["budget"]["n_trials"]  # the config is not rewritten
    data["objectives"] = data["objectives"][:1]
    data["eval"]["heldout"] = {"demo_instruct": "demo_instruct_h"}
    assert load_config(write(workdir, data)).n_trials == 1  # one objective, one path


def test_error_names_the_config_file(workdir: Path) -> None:
    data = good_config()
    data["merge"]["method"] = "nope"
    path = write(workdir, data, "other.yml")
    with pytest.raises(UserError, match=r"^.*other\.yml: merge\.method: unknown method 'nope'"):
        load_config(path)


def test_scoring_settings_are_part_of_the_resume_signature_only_when_set(
    workdir: Path, tmp_path: Path
) -> None:
    import optuna

    from search.study.space import SearchSpace
    from search.study.storage import check_resume, signature

    def sig(data: dict[str, Any]) -> dict[str, Any]:
        cfg = load_config(write(workdir, data))
        return signature(cfg, SearchSpace.build(cfg, ["a", "b"]), {"checkpoints": []})

    plain = sig(good_config())
    # a study made before these settings existed keeps its signature, so it still resumes
    assert set(plain["scoring"]) == {"objectives", "limit", "num_fewshot", "seed"}
    assert "gen_kwargs" not in plain["scoring"]["objectives"][0]["tasks"][0]
    assert "signal" not in plain["scoring"]["objectives"][0]
    chat = copy.deepcopy(good_config())
    chat["eval"].update(apply_chat_template=True, system_instruction="Be brief.", max_length=64)
    chat["objectives"][1]["tasks"][0]["gen_kwargs"] = {"max_gen_toks": 4}
    changed = sig(chat)
    assert changed["scoring"]["apply_chat_template"] is True
    assert changed["scoring"]["max_length"] == 64
    assert changed["scoring"]["objectives"][1]["tasks"][0]["gen_kwargs"] == {"max_gen_toks": 4}
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    for key, value in plain.items():
        study.set_user_attr(key, value)
    cfg = load_config(write(workdir, chat))
    with pytest.raises(UserError, match=r"how trials are scored changed \(objectives"):
        check_resume(study, cfg, changed, "study.yaml")


@pytest.mark.parametrize(
    ("staged", "message"),
    [
        ({"rungs": [0.5, 0.25, 1.0]}, "eval.staged.rungs: expected increasing fractions"),
        ({"rungs": [0.25, 0.5]}, "eval.staged.rungs: the last rung scores every example"),
        ({"confidence": 1.0}, "eval.staged.confidence"),
    ],
)
def test_bad_staged_settings_are_one_line_naming_the_field(
    workdir: Path, staged: dict, message: str
) -> None:
    data = good_config()
    data.setdefault("eval", {})["staged"] = staged
    with pytest.raises(UserError) as err:
        load_config(write(workdir, data))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_staged_scoring_is_off_by_default_and_true_means_the_defaults(workdir: Path) -> None:
    data = good_config()
    assert load_config(write(workdir, data)).strategies == ()
    data.setdefault("eval", {})["staged"] = True
    (staged,) = load_config(write(workdir, data)).strategies
    assert staged.name == "staged" and staged.settings.rungs == (0.125, 0.25, 0.5, 1.0)
