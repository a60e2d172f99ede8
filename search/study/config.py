"""The study config: one YAML file, validated once at the edge into a frozen pydantic model.

Every problem becomes one :class:`~search.errors.UserError` line of the form
``CONFIG.yml: field.path: what is expected``, raised before anything is written.
Relative paths (checkpoints, base_model, tasks_path, an objective's data file, the SQLite file
of the storage URL) resolve against the current working directory, as mergekit does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evaluators.spec import EvalSpec, ObjectiveSpec, VllmSpec, check_chat_settings
from search.engine.registry import METHODS
from search.errors import UserError
from search.study.samplers import FW_SAMPLER, check_sampler

ParamValue = bool | int | float


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


class FisherConfig(_Strict):
    """Calibration data of ``merge.method: fisher``: each checkpoint's Fisher is computed on it.

    Exactly one of ``data`` (a local file) and ``tasks: from_objectives`` (the prompts and gold
    targets of the objectives' search-split examples, the texts of perplexity objectives).
    """

    data: Path | None = None  # .txt (one text per line) or .jsonl (text, or prompt + target)
    tasks: Literal["from_objectives"] | None = None
    # N, the examples per Fisher (one backward pass each, per checkpoint): 256 as in FusionBench
    examples: int = Field(default=256, ge=1)
    # None: ".fisher" beside the SQLite file of the study, else studies/.fisher
    cache_dir: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> FisherConfig:
        if (self.data is None) == (self.tasks is None):
            raise ValueError(
                "expected exactly one of data: FILE.txt|FILE.jsonl and tasks: from_objectives"
            )
        return self


class MergeConfig(_Strict):
    """What is merged and which knobs the study turns."""

    method: str = "linear"
    layer_groups: int = Field(default=1, ge=1)  # 1: one weight per checkpoint
    weights: WeightRange = WeightRange()
    # name -> fixed value, or {low, high} to search; unlisted parameters keep the method default
    params: dict[str, Any] = Field(default_factory=dict)
    fisher: FisherConfig | None = None  # methods that read Fishers only

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
                    raise ValueError(f"merge.params.{name}: {_one_line(exc)}") from None
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


class RacingConfig(_Strict):
    """Staged scoring that races the front (search.study.racing): rungs of growing example
    counts, a trial stopped once a front member beats it on every objective with confidence."""

    # cumulative fractions of each task's examples scored by the end of each rung; last 1.0
    rungs: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)

    @model_validator(mode="after")
    def _check_rungs(self) -> RacingConfig:
        r = self.rungs
        growing = all(a < b for a, b in zip(r, r[1:], strict=False))
        if not r or any(not 0 < f <= 1 for f in r) or not growing:
            raise ValueError(
                f"rungs: expected increasing fractions in (0, 1], e.g. [0.125, 0.25, 0.5, 1.0] "
                f"(got {list(r)})"
            )
        if r[-1] != 1.0:
            raise ValueError(
                f"rungs: the last rung scores every example: expected 1.0 (got {r[-1]})"
            )
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
    # staged scoring (off unless given): `racing: {}` or `true` for the defaults
    racing: RacingConfig | None = None

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
    # torch threads per worker on CPU; None: cores / local workers. Small models run best with 1:
    # on a busy 2-core machine two threads made a demo trial 5x slower than one.
    threads: int | None = Field(default=None, ge=1)


class FrankWolfeConfig(_Strict):
    """Frank-Wolfe proposals (``seed_trials: [..., fw]`` or ``sampler: {name: fw}``)."""

    examples: int = Field(default=64, ge=1)  # proxy examples per task, from the search split
    steps: int = Field(default=10, ge=1)  # Frank-Wolfe iterations per path (FW-Merging: 10)
    # paths, one per preference vector over the objectives' proxy losses (1 with one objective)
    preferences: int = Field(default=5, ge=1)


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
    fw: FrankWolfeConfig = FrankWolfeConfig()
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Where the checkpoints' stacks live (search.engine.placement); never changes a merge.
    pool: Literal["auto", "device", "host", "disk"] = "auto"

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
        self._check_heldout()
        self._check_racing()
        self._check_merge()
        check_sampler(
            self.sampler, n_objectives=len(self.objectives), constrained=bool(self.constraints)
        )
        self._check_frank_wolfe()
        return self

    @property
    def uses_frank_wolfe(self) -> bool:
        """Frank-Wolfe paths are computed: ``fw`` seed trials, or the ``fw`` sampler."""
        return "fw" in self.seed_trials or self.sampler.name == FW_SAMPLER

    @property
    def fw_paths(self) -> int:
        """Frank-Wolfe paths: one per preference vector, one with a single objective."""
        return self.fw.preferences if len(self.objectives) > 1 else 1

    def _check_frank_wolfe(self) -> None:
        if not self.uses_frank_wolfe:
            return
        field = "sampler.name" if self.sampler.name == FW_SAMPLER else "seed_trials"
        method = METHODS[self.merge.method]
        if not method.frank_wolfe:
            able = ", ".join(m.name for m in METHODS.values() if m.frank_wolfe)
            raise ValueError(
                f"{field}: Frank-Wolfe proposals need a merge that is Σ w_i θ_i on the simplex "
                f"(method: {able}); method {method.name!r} is not"
            )
        weights = self.merge.weights
        if weights.low > 0:
            raise ValueError(
                f"merge.weights.low: Frank-Wolfe points give checkpoints weight 0; expected "
                f"low <= 0 with {field}: fw (got {weights.low})"
            )
        spec = {p.name: p for p in method.params}.get("normalize")
        normalize = weights.normalize if weights.normalize is not None else spec and spec.default
        if not normalize and weights.high < 1:
            raise ValueError(
                "merge.weights.high: Frank-Wolfe points give a checkpoint weight 1 when the "
                f"weights are not normalized; expected high >= 1 (got {weights.high})"
            )
        if self.sampler.name == FW_SAMPLER and self.budget.n_trials > self.fw_paths:
            # the fw sampler proposes nothing else: the study's trials are the paths' endpoints
            object.__setattr__(
                self, "budget", self.budget.model_copy(update={"n_trials": self.fw_paths})
            )

    @property
    def racing(self) -> RacingConfig | None:
        """Staged scoring's settings, ``None`` when every trial is scored in full."""
        return self.eval.racing

    def _check_racing(self) -> None:
        if self.racing is None:
            return
        for i, obj in enumerate(self.objectives):
            if obj.evaluator == "perplexity":
                raise ValueError(
                    f"eval.racing: objectives[{i}] ({obj.name!r}) scores perplexity, a ratio "
                    "over the whole file, not a mean of per-example values; staged scoring "
                    "needs mean metrics: set eval.racing: null or drop that objective"
                )

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

    def eval_spec(self, heldout: bool = False) -> EvalSpec:
        """The evaluators' settings (the same for the search and the held-out objectives).

        ``heldout`` is accepted for symmetry with :meth:`heldout_objectives`; the held-out
        task names come from that method, the map stays in ``EvalSpec.heldout``.
        """
        del heldout
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
        """The objectives scored on ``split``: ``"search"`` (as configured), ``"heldout"``
        (``eval.heldout``) or ``"test"`` (``eval.test``); () when that split has no mapping.

        Perplexity objectives have no task to map and are kept as they are.
        """
        if split == "search":
            return self.objectives
        mapping = self.eval.heldout if split == "heldout" else self.eval.test
        if not mapping:
            return ()
        mapped = []
        for obj in self.objectives:
            tasks = tuple(t.model_copy(update={"task": mapping[t.task]}) for t in obj.tasks)
            mapped.append(obj.model_copy(update={"tasks": tasks}))
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
        return self.model_dump(mode="json")


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
        raise UserError(f"{path}: {_one_line(exc)}") from None


def check_paths(cfg: StudyConfig, path: str | Path = "<config>") -> None:
    """Every file and folder the config names exists (relative to the working directory)."""
    items: list[tuple[str, Path | None, bool]] = [
        (f"checkpoints[{i}]", p, True) for i, p in enumerate(cfg.checkpoints)
    ]
    items += [("base_model", cfg.base_model, True), ("tasks_path", cfg.tasks_path, True)]
    items += [(f"objectives[{i}].data", o.data, False) for i, o in enumerate(cfg.objectives)]
    if cfg.merge.fisher is not None:
        items.append(("merge.fisher.data", cfg.merge.fisher.data, False))
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


def _one_line(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc = [
        x for x in err["loc"] if not (isinstance(x, str) and x.startswith(("function-", "tagged-")))
    ]
    loc = _drop_union_tags(loc)
    field = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".")
    msg = err["msg"]
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        msg = "unknown field" + (f"; expected one of: {', '.join(allowed)}" if allowed else "")
    elif kind == "missing":
        msg = "required field is missing"
    elif kind.startswith("value_error") or kind == "assertion_error":
        msg = re.sub(r"^(Value|Assertion) error, ", "", msg)
    elif kind == "too_short":
        n = (err.get("ctx") or {}).get("min_length", 1)
        msg = f"expected at least {n} entr{'y' if n == 1 else 'ies'}"
    elif kind in ("tuple_type", "list_type"):
        msg = f"expected a list (got {err.get('input')!r})"
    elif kind == "string_pattern_mismatch" and loc and loc[-1] in _PATTERN_HINTS:
        msg = f"expected {_PATTERN_HINTS[loc[-1]]} (got {err.get('input')!r})"
    else:
        value = err.get("input")
        if isinstance(value, str | int | float | bool) or value is None:
            msg = f"{msg} (got {value!r})"
    more = (
        f" ({len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
        if len(errors) > 1
        else ""
    )
    if not field or msg.startswith((f"{field}.", f"{field}:", f"{field}[")):
        return f"{msg}{more}"  # the validator named a more precise field itself
    return f"{field}: {msg}{more}"


_PATTERN_HINTS = {
    "name": "letters, digits, '_', '.' or '-' only",
    "device": "auto, cpu, cuda or cuda:N",
}


def _drop_union_tags(loc: Sequence[Any]) -> list[Any]:
    """Pydantic puts the union member tried (``float``, ``ParamRange``) into the location."""
    out = []
    for x in loc:
        if isinstance(x, str) and (x in {"bool", "int", "float", "str"} or x[:1].isupper()):
            continue
        out.append(x)
    return out


def _fields_at(loc: Sequence[Any]) -> list[str]:
    """Names of the fields allowed at a location of the config (for "unknown field" errors)."""
    model: Any = StudyConfig
    for part in loc:
        model = _unwrap(model)
        if isinstance(part, int):
            args = [a for a in get_args(model) if a is not Ellipsis]
            model = args[0] if args else None
        elif (
            isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields
        ):
            model = model.model_fields[part].annotation
        else:
            return []
    model = _unwrap(model)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _unwrap(tp: Any) -> Any:
    """``X | None`` -> ``X``."""
    args = [a for a in get_args(tp) if a is not type(None)]
    if get_origin(tp) is not None and len(args) == 1 and get_origin(tp) not in (tuple, list, dict):
        return args[0]
    return tp
