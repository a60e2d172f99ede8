"""The study config: one YAML file, validated once at the edge into a frozen pydantic model.

Every problem becomes one :class:`~search.errors.UserError` line of the form
``CONFIG.yml: field.path: what is expected``, raised before anything is written.
Relative paths (checkpoints, base_model, tasks_path, an objective's data file, the SQLite file
of the storage URL) resolve against the current working directory, as mergekit does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from evaluators.spec import EvalSpec, ObjectiveSpec, VllmSpec, check_chat_settings
from search.engine.registry import METHODS
from search.errors import UserError, one_line
from search.study.features import Feature, build_features
from search.study.samplers import SAMPLERS, check_sampler


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Parametrization = Literal["simplex", "independent"]


class WeightRange(_Strict):
    """How every checkpoint's weight (per layer group) is searched.

    ``independent``: one weight per checkpoint in ``[low, high]``. ``simplex`` (methods that
    normalize the weights): the samplers search ``u`` in (0, 1] per checkpoint and the weight is
    ``-log u``, so uniform ``u`` gives normalized weights uniform on the simplex; ``low`` and
    ``high`` do not apply.
    """

    low: float = 0.0
    high: float = 1.0
    # None: the method's own default. True: weights are divided by their sum per layer group.
    normalize: bool | None = None
    # None: simplex for methods that normalize the weights, independent otherwise.
    parametrization: Parametrization | None = None

    @model_validator(mode="after")
    def _check(self) -> WeightRange:
        if not self.low < self.high:
            raise ValueError(f"expected low < high (got low={self.low}, high={self.high})")
        return self


class ParamRange(_Strict):
    """A method parameter searched between ``low`` and ``high`` (inclusive)."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> ParamRange:
        if not self.low < self.high:
            raise ValueError(f"expected low < high (got low={self.low}, high={self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log=true needs low > 0")
        return self


class MergeConfig(_Strict):
    """What is merged and which knobs the study turns."""

    method: str = "linear"
    layer_groups: int = Field(default=1, ge=1)  # 1: one weight per checkpoint
    weights: WeightRange = WeightRange()
    # name -> fixed value, or {low, high} to search; unlisted parameters keep the method default
    params: dict[str, Any] = Field(default_factory=dict)
    # calibration data of methods that read Fishers (search.study.fisher owns this section)
    fisher: dict[str, Any] | None = None

    @field_validator("params", mode="before")
    @classmethod
    def _parse_params(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for name, v in value.items():
            if isinstance(v, dict):
                try:
                    v = ParamRange.model_validate(v)
                except ValidationError as exc:
                    raise ValueError(f"merge.params.{name}: {one_line(exc, ParamRange)}") from None
            elif not isinstance(v, bool | int | float):
                raise ValueError(  # noqa: TRY004 - pydantic reports ValueError as a field error
                    f"merge.params.{name}: expected a number, true/false "
                    f"or a {{low, high}} range (got {v!r})"
                )
            out[str(name)] = v
        return out


class Constraint(_Strict):
    """A bound on an objective; trials outside it are stored as infeasible."""

    objective: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _check(self) -> Constraint:
        if self.min is None and self.max is None:
            raise ValueError("expected 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"expected min <= max (got min={self.min}, max={self.max})")
        return self


class EvalConfig(_Strict):
    """How tasks are run (see evaluators.spec.EvalSpec)."""

    limit: int | None = Field(default=None, ge=1)  # examples per task; None: all
    batch_size: int = Field(default=32, ge=1)
    num_fewshot: int | None = Field(default=None, ge=0)
    seed: int = 0
    heldout: dict[str, str] = Field(default_factory=dict)  # search task -> held-out task
    # lm-eval's chat settings: false, true (the tokenizer's template) or a template name
    apply_chat_template: bool | str = False
    system_instruction: str | None = None
    fewshot_as_multiturn: bool | None = None  # None: true exactly when a chat template applies
    max_length: int | None = Field(default=None, ge=2)  # model context; None: the model config's
    confirm_run_unsafe_code: bool = False  # allow tasks marked unsafe_code (they run model output)
    # hf: transformers; vllm: one resident vLLM engine per worker (pip install -e .[vllm])
    backend: Literal["hf", "vllm"] = "hf"
    vllm: VllmSpec = Field(default_factory=VllmSpec)  # engine settings (evaluators.spec.VllmSpec)

    @model_validator(mode="after")
    def _check_chat(self) -> EvalConfig:
        check_chat_settings(self.apply_chat_template, self.fewshot_as_multiturn, "eval.")
        return self

    # search task -> test task: data neither the search nor the choice of a merge saw
    test: dict[str, str] = Field(default_factory=dict)
    # staged scoring (off unless given): `racing: {}` or `true` for the defaults; the section
    # belongs to search.study.staged, which checks it when it is given
    racing: dict[str, Any] | None = None

    @field_validator("racing", mode="before")
    @classmethod
    def _racing_bool(cls, value: Any) -> Any:
        if value is True:
            return {}
        return None if value is False else value


class SamplerConfig(_Strict):
    """An Optuna sampler by name (search.study.samplers.SAMPLERS) and its keyword options."""

    name: str = "tpe"
    seed: int | None = 0
    options: dict[str, Any] = Field(default_factory=dict)


class BudgetConfig(_Strict):
    """When the study stops: after n_trials finished trials in all, once examples (optional)
    examples have been scored in all (no trial starts unless a full evaluation still fits),
    or after timeout_s per launch; whichever comes first."""

    n_trials: int = Field(default=60, ge=1)
    examples: int | None = Field(default=None, ge=1)
    timeout_s: float | None = Field(default=None, gt=0)


class WorkersConfig(_Strict):
    """Liveness of workers on an RDB storage: a dead worker's trial is retried."""

    heartbeat_s: int = Field(default=30, ge=1)  # each running trial writes a heartbeat this often
    grace_s: int | None = Field(default=None, ge=1)  # stale after this long; None: 2 x heartbeat_s
    max_retry: int = Field(default=3, ge=0)  # retries of one trial whose worker died
    # how long workers and the launcher wait out a storage outage (a PostgreSQL restart, a network
    # blip, SQLite's "database is locked") before giving up: a restart takes seconds, a failover
    # a minute or two; 0: give up at the first error
    storage_retry_s: float = Field(default=300, ge=0)
    # torch threads per worker on CPU; None: cores / local workers. Small models run best with 1:
    # on a busy 2-core machine two threads made a demo trial 5x slower than one.
    threads: int | None = Field(default=None, ge=1)


SeedTrial = Literal["uniform", "singles", "fw"]
Split = Literal["search", "heldout", "test"]  # the data a merge is scored on
_STORAGE = re.compile(r"^(sqlite:///.+|postgresql(\+\w+)?://.+)$")


class StudyConfig(_Strict):
    """The whole study: pool, merge method, objectives, sampler, budget."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    storage: str = ""  # default filled in: sqlite:///studies/<name>.db
    checkpoints: tuple[Path, ...] = Field(min_length=1)
    base_model: Path | None = None
    merge: MergeConfig = MergeConfig()
    objectives: tuple[ObjectiveSpec, ...] = Field(min_length=1)
    constraints: tuple[Constraint, ...] = ()
    tasks_path: Path | None = None
    eval: EvalConfig = EvalConfig()
    sampler: SamplerConfig = SamplerConfig()
    budget: BudgetConfig = BudgetConfig()
    workers: WorkersConfig = WorkersConfig()
    seed_trials: tuple[SeedTrial, ...] = ("uniform", "singles")
    # Frank-Wolfe proposals' settings (search.study.frank_wolfe checks them when it is on)
    fw: dict[str, Any] = Field(default_factory=dict)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Where the checkpoints' stacks live (search.engine.placement); never changes a merge.
    pool: Literal["auto", "device", "host", "disk"] = "auto"
    _features: tuple[Feature, ...] = PrivateAttr(default=())

    @model_validator(mode="before")
    @classmethod
    def _default_storage(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and data.get("storage") is None
            and isinstance(data.get("name"), str)
        ):
            data = {**data, "storage": f"sqlite:///studies/{data['name']}.db"}
        return data

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        if not _STORAGE.match(self.storage) or self.storage.startswith("sqlite:///:memory:"):
            raise ValueError(
                "storage: expected sqlite:///FILE.db or postgresql://USER@HOST:PORT/DB "
                f"(got {self.storage!r})"
            )
        names = [o.name for o in self.objectives]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(
                    f"objectives[{i}].name: {name!r} is used twice; names must be unique"
                )
        for i, con in enumerate(self.constraints):
            if con.objective not in names:
                raise ValueError(
                    f"constraints[{i}].objective: unknown objective {con.objective!r}; "
                    f"expected one of: {', '.join(names)}"
                )
            if self.objectives[names.index(con.objective)].signal:
                raise ValueError(
                    f"constraints[{i}].objective: {con.objective!r} searches on its signal, whose "
                    "values are not in the units of its tasks; bound an objective without signal"
                )
        signalled = [o.name for o in self.objectives if o.signal]
        if signalled and not self.eval.heldout:
            raise ValueError(
                f"objectives: {signalled[0]!r} has a signal, which needs eval.heldout (the choice "
                "of the merge is judged on its tasks, on data the search never saw)"
            )
        self._check_heldout()
        self._check_merge()
        check_sampler(
            self.sampler, n_objectives=len(self.objectives), constrained=bool(self.constraints)
        )
        self._features = build_features(self)  # each strategy the config turns on checks itself
        return self

    @property
    def features(self) -> tuple[Feature, ...]:
        """The strategies this config turns on (:mod:`search.study.features`), checked."""
        return self._features

    @property
    def seed_kinds(self) -> tuple[str, ...]:
        """The kinds of seed trials a new study enqueues, in order: ``seed_trials``, or the
        only kinds a sampler that proposes nothing else runs (the ``fw`` sampler: ``fw``)."""
        return SAMPLERS[self.sampler.name].seed_kinds or tuple(dict.fromkeys(self.seed_trials))

    @property
    def n_trials(self) -> int:
        """The trial budget: ``budget.n_trials``, capped by a strategy that can run fewer
        (the ``fw`` sampler runs its paths' endpoints only)."""
        caps = [c for c in (f.trial_cap() for f in self.features) if c is not None]
        return min([self.budget.n_trials, *caps])

    def _check_heldout(self) -> None:
        tasks = sorted({t.task for o in self.objectives for t in o.tasks})
        for split, what in (("heldout", "held-out"), ("test", "test")):
            mapping = getattr(self.eval, split)
            for task in mapping:
                if task not in tasks:
                    raise ValueError(
                        f"eval.{split}.{task}: not a task of any objective; "
                        f"expected one of: {', '.join(tasks)}"
                    )
            missing = [t for t in tasks if t not in mapping]
            if mapping and missing:
                raise ValueError(
                    f"eval.{split}: no {what} task for {missing[0]!r}; "
                    "map every objective task or none"
                )

    def _check_merge(self) -> None:
        merge = self.merge
        if merge.method not in METHODS:
            raise ValueError(
                f"merge.method: unknown method {merge.method!r}; "
                f"expected one of: {', '.join(METHODS)}"
            )
        method = METHODS[merge.method]
        if method.needs_base and self.base_model is None:
            raise ValueError(
                f"base_model: method {method.name!r} needs a base model; set base_model"
            )
        if method.n_checkpoints is not None and len(self.checkpoints) != method.n_checkpoints:
            raise ValueError(
                f"checkpoints: method {method.name!r} merges exactly "
                f"{method.n_checkpoints} checkpoints "
                f"(got {len(self.checkpoints)})"
            )
        specs = {p.name: p for p in method.params}
        if merge.weights.normalize is not None and "normalize" not in specs:
            raise ValueError(
                f"merge.weights.normalize: method {method.name!r} has no 'normalize' "
                "parameter; remove it"
            )
        if "normalize" in merge.params:
            raise ValueError("merge.params.normalize: set it as merge.weights.normalize")
        for name, value in merge.params.items():
            field = f"merge.params.{name}"
            if name not in specs:
                known = ", ".join(n for n in specs if n != "normalize") or "none"
                raise ValueError(
                    f"{field}: method {method.name!r} has no parameter {name!r}; "
                    f"expected one of: {known}"
                )
            _check_param(field, specs[name], value)
        if method.needs_fisher and merge.fisher is None:
            raise ValueError(
                f"merge.fisher: method {method.name!r} needs calibration data: "
                "{data: FILE.txt|FILE.jsonl, examples: N} or {tasks: from_objectives}"
            )
        if merge.fisher is not None and not method.needs_fisher:
            raise ValueError(
                f"merge.fisher: method {method.name!r} reads no Fishers; remove merge.fisher"
            )
        if method.min_weight is not None and merge.weights.low < method.min_weight:
            raise ValueError(
                f"merge.weights.low: method {method.name!r} needs weights >= "
                f"{method.min_weight} (got {merge.weights.low})"
            )
        self._check_parametrization()
        searched = [n for n, v in merge.params.items() if isinstance(v, ParamRange)]
        if not searched and not method.uses_weights:
            raise ValueError(
                f"merge.params: method {method.name!r} ignores the weights; "
                "give a {low, high} range "
                f"for one of: {', '.join(specs)}"
            )

    def _check_parametrization(self) -> None:
        weights = self.merge.weights
        method = METHODS[self.merge.method]
        if weights.parametrization == "simplex" and not method.scale_free(self.fixed_params()):
            raise ValueError(
                f"merge.weights.parametrization: simplex needs a method that normalizes the "
                f"weights (linear or ties with normalize: true); method {method.name!r} "
                f"{'with normalize: false ' if 'normalize' in method.param_names else ''}"
                "does not: use independent"
            )
        bounded = {"low", "high"} & weights.model_fields_set
        if (
            self.weight_parametrization() == "simplex"
            and bounded
            and (weights.low, weights.high) != (0.0, 1.0)
        ):
            raise ValueError(
                f"merge.weights.{sorted(bounded)[0]}: low/high bound independent weights only; "
                "simplex weights are -log u with u in (0, 1]: remove low/high or set "
                "merge.weights.parametrization: independent"
            )

    def fixed_params(self) -> dict[str, Any]:
        """The merge method's parameters that the study holds fixed (defaults filled in)."""
        method = METHODS[self.merge.method]
        out: dict[str, Any] = {}
        for spec in method.params:
            value = self.merge.params.get(spec.name)
            if spec.name == "normalize":
                value = self.merge.weights.normalize
            if not isinstance(value, ParamRange):
                out[spec.name] = spec.default if value is None else value
        return out

    def weight_parametrization(self) -> Parametrization:
        """``merge.weights.parametrization``, or its default: simplex when the method normalizes."""
        given = self.merge.weights.parametrization
        if given is not None:
            return given
        scale_free = METHODS[self.merge.method].scale_free(self.fixed_params())
        return "simplex" if scale_free else "independent"

    # ----------------------------------------------------------------- views used by the workers

    def eval_spec(self) -> EvalSpec:
        """The evaluators' settings (the same for every split: :meth:`split_objectives` maps the
        tasks, the held-out map stays in ``EvalSpec.heldout``)."""
        return EvalSpec(
            tasks_path=self.tasks_path,
            limit=self.eval.limit,
            batch_size=self.eval.batch_size,
            num_fewshot=self.eval.num_fewshot,
            seed=self.eval.seed,
            heldout=dict(self.eval.heldout),
            apply_chat_template=self.eval.apply_chat_template,
            system_instruction=self.eval.system_instruction,
            fewshot_as_multiturn=self.eval.fewshot_as_multiturn,
            max_length=self.eval.max_length,
            confirm_run_unsafe_code=self.eval.confirm_run_unsafe_code,
            backend=self.eval.backend,
            vllm=self.eval.vllm,
        )

    def heldout_objectives(self) -> tuple[ObjectiveSpec, ...]:
        """The objectives with each task replaced by its held-out task; () without a mapping.

        Perplexity objectives have no task to map and are kept as they are.
        """
        return self.split_objectives("heldout")

    def split_objectives(self, split: Split) -> tuple[ObjectiveSpec, ...]:
        """The objectives scored on ``split``: ``"search"`` (each objective's ``signal`` when it
        has one, else its tasks), ``"heldout"`` (``eval.heldout``) or ``"test"`` (``eval.test``;
        both map ``tasks``, never the signal); () when that split has no mapping.

        Perplexity objectives have no task to map and are kept as they are.
        """
        if split == "search":
            return tuple(
                o.model_copy(update={"tasks": o.signal, "signal": ()}) if o.signal else o
                for o in self.objectives
            )
        mapping = self.eval.heldout if split == "heldout" else self.eval.test
        if not mapping:
            return ()
        mapped = []
        for obj in self.objectives:
            tasks = tuple(t.model_copy(update={"task": mapping[t.task]}) for t in obj.tasks)
            mapped.append(obj.model_copy(update={"tasks": tasks, "signal": ()}))
        return tuple(mapped)

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    def constraint_values(self, values: Mapping[str, float]) -> list[float]:
        """Optuna's convention, one value per bound in config order: <= 0 means feasible."""
        out: list[float] = []
        for con in self.constraints:
            v = float(values[con.objective])
            if con.min is not None:
                out.append(con.min - v)
            if con.max is not None:
                out.append(v - con.max)
        return out

    def to_json(self) -> dict[str, Any]:
        """The config as JSON, as the study records it: the storage URL without its password
        (a study's attrs are served by optuna-dashboard to whoever reaches its port)."""
        from search.study.storage.connect import redact

        data = self.model_dump(mode="json")
        data["storage"] = redact(self.storage)
        return data


def _check_param(field: str, spec: Any, value: Any) -> None:
    """A fixed value or a {low, high} range must fit the method's declared ParamSpec."""
    low, high = spec.low, spec.high
    span = f"[{low}, {high}]"
    if isinstance(value, ParamRange):
        if spec.kind == "bool":
            raise ValueError(f"{field}: a bool parameter takes true or false, not a range")
        if spec.kind == "int" and not (
            float(value.low).is_integer() and float(value.high).is_integer()
        ):
            raise ValueError(f"{field}: an int parameter needs integer low and high")
        if (low is not None and value.low < low) or (high is not None and value.high > high):
            raise ValueError(
                f"{field}: range [{value.low}, {value.high}] must lie inside "
                f"the method's range {span}"
            )
        return
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{field}: expected true or false (got {value!r})")
        return
    if isinstance(value, bool) or (spec.kind == "int" and not float(value).is_integer()):
        raise ValueError(
            f"{field}: expected {'an integer' if spec.kind == 'int' else 'a number'} "
            f"(got {value!r})"
        )
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(
            f"{field}: expected a value in {span} or a {{low, high}} range (got {value!r})"
        )


# --------------------------------------------------------------------------------- loading


def load_config(path: str | Path, **overrides: Any) -> StudyConfig:
    """Read, validate and check a study config; ``overrides`` replace top-level fields.

    Raises:
        UserError: one line ``PATH: field.path: what is expected``.
    """
    path = Path(path)
    data = read_yaml(path)
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "n_trials":
            data["budget"] = {**(data.get("budget") or {}), "n_trials": value}
        else:
            data[key] = value
    cfg = parse_config(data, path)
    check_paths(cfg, path)
    return cfg


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: not valid YAML: {where}{problem}") from None
    if not isinstance(data, dict):
        raise UserError(
            f"{path}: expected a mapping of config fields (name, checkpoints, objectives, ...)"
        )
    return data


def parse_config(data: Mapping[str, Any], path: str | Path = "<config>") -> StudyConfig:
    """Validate a mapping; pydantic's errors become one line naming the field."""
    try:
        return StudyConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise UserError(f"{path}: {one_line(exc, StudyConfig, _HINTS)}") from None


def check_paths(cfg: StudyConfig, path: str | Path = "<config>") -> None:
    """Every file and folder the config names exists (relative to the working directory)."""
    items: list[tuple[str, Path | None, bool]] = [
        (f"checkpoints[{i}]", p, True) for i, p in enumerate(cfg.checkpoints)
    ]
    items += [("base_model", cfg.base_model, True), ("tasks_path", cfg.tasks_path, True)]
    items += [(f"objectives[{i}].data", o.data, False) for i, o in enumerate(cfg.objectives)]
    items += [(field, p, False) for f in cfg.features for field, p in f.files()]
    for field, p, is_dir in items:
        if p is None:
            continue
        if is_dir and not p.is_dir():
            raise UserError(
                f"{path}: {field}: folder {p} does not exist (relative paths start at {Path.cwd()})"
            )
        if not is_dir and not p.is_file():
            raise UserError(
                f"{path}: {field}: file {p} does not exist (relative paths start at {Path.cwd()})"
            )


_HINTS = {
    "name": "letters, digits, '_', '.' or '-' only",
    "device": "auto, cpu, cuda or cuda:N",
}
