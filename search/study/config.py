"""The study config: one YAML file, validated once at the edge into a frozen pydantic model.

Every problem becomes one :class:`~search.errors.UserError` line of the form
``CONFIG.yml: field.path: what is expected``, raised before anything is written.
Relative paths (checkpoints, base_model, tasks_path, an objective's data file, the SQLite file
of the storage URL) resolve against the current working directory, as mergekit does. A
checkpoint or base model may be a Hugging Face Hub ID (``org/name``, ``org/name@revision``) where
no such folder exists: :func:`load_config` resolves it to its snapshot in the local cache.
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
from pydantic_core import PydanticCustomError

from evaluators.spec import EvalSpec, ObjectiveSpec, check_chat_settings
from search.engine.registry import check_merge
from search.errors import UserError, one_line
from search.strategies import get_method, method_names
from search.study.samplers import SAMPLERS, check_sampler
from search.study.strategy import (
    Strategy,
    build_strategies,
    join_sections,
    offered,
    split_sections,
)


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


class StudyEval(EvalSpec):
    """The study's ``eval`` section: :class:`~evaluators.spec.EvalSpec` as the evaluators take it
    (each setting declared there, once), plus what only a study has: the test split (the
    strategies' sections, e.g. ``eval.staged``, are read by the strategies). The tasks folder is
    the study's top-level ``tasks_path`` (:meth:`StudyConfig.eval_spec` puts it in), so
    ``eval.tasks_path`` is no field here."""

    tasks_path: None = Field(default=None, exclude=True)  # top-level tasks_path instead
    # search task -> test task: data neither the search nor the choice of a merge saw
    test: dict[str, str] = Field(default_factory=dict)

    @field_validator("tasks_path", mode="before")
    @classmethod
    def _no_tasks_path(cls, value: Any) -> Any:
        raise PydanticCustomError("extra_forbidden", "Extra inputs are not permitted")

    @model_validator(mode="after")
    def _check_chat(self) -> StudyEval:  # EvalSpec's check, naming the study's fields
        check_chat_settings(self.apply_chat_template, self.fewshot_as_multiturn, "eval.")
        return self


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
    eval: StudyEval = StudyEval()
    sampler: SamplerConfig = SamplerConfig()
    budget: BudgetConfig = BudgetConfig()
    workers: WorkersConfig = WorkersConfig()
    seed_trials: tuple[SeedTrial, ...] = ("uniform", "singles")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Where the checkpoints' stacks live (search.engine.placement); never changes a merge.
    pool: Literal["auto", "device", "host", "disk"] = "auto"
    # the strategies' config sections (search.strategies: each validates its own), by name
    _sections: dict[str, Any] = PrivateAttr(default_factory=dict)
    _strategies: tuple[Strategy, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _strategy_sections(cls, data: Any, handler: Any) -> StudyConfig:
        sections: dict[str, Any] = {}
        if isinstance(data, Mapping):
            data, sections = split_sections(data)
        cfg = handler(data)
        if isinstance(data, Mapping):
            cfg._sections = sections
        return cfg  # the after-validators run next: _check builds the strategies last

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
            if self.objectives[names.index(con.objective)].search_tasks:
                raise ValueError(
                    f"constraints[{i}].objective: {con.objective!r} searches on its search_tasks, "
                    "whose values are not in the units of its tasks; bound an objective without "
                    "search_tasks"
                )
        signalled = [o.name for o in self.objectives if o.search_tasks]
        if signalled and not self.eval.heldout:
            raise ValueError(
                f"objectives: {signalled[0]!r} has search_tasks, which need eval.heldout (the "
                "choice of the merge is judged on its tasks, on data the search never saw)"
            )
        self._check_heldout()
        self._check_merge()
        check_sampler(
            self.sampler, n_objectives=len(self.objectives), constrained=bool(self.constraints)
        )
        # each strategy the config turns on checks its own section
        self._strategies = build_strategies(self, self._sections)
        return self

    @property
    def strategies(self) -> tuple[Strategy, ...]:
        """The strategies this config turns on (:mod:`search.strategies`), checked."""
        return self._strategies

    @property
    def seed_kinds(self) -> tuple[str, ...]:
        """The kinds of seed trials a new study enqueues, in order: ``seed_trials``, or the
        only kinds a sampler that proposes nothing else runs (the ``fw`` sampler: ``fw``)."""
        return SAMPLERS[self.sampler.name].seed_kinds or tuple(dict.fromkeys(self.seed_trials))

    @property
    def n_trials(self) -> int:
        """The trial budget: ``budget.n_trials``, capped by a strategy that can run fewer
        (the ``fw`` sampler runs its paths' endpoints only)."""
        caps = offered(self.strategies, "trial_cap")
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
        """The merge section against its method's declaration (:func:`~search.engine.registry.
        check_merge`; the methods strategies provide included), then what the search space makes
        of it."""
        method = check_merge(
            self.merge,
            n_checkpoints=len(self.checkpoints),
            has_base=self.base_model is not None,
            names=method_names(),
            lookup=get_method,
        )
        self._check_parametrization()
        method.check_searched(self.merge.params)

    def _check_parametrization(self) -> None:
        weights = self.merge.weights
        method = get_method(self.merge.method)
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
        method = get_method(self.merge.method)
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
        scale_free = get_method(self.merge.method).scale_free(self.fixed_params())
        return "simplex" if scale_free else "independent"

    # ----------------------------------------------------------------- views used by the workers

    def eval_spec(self) -> EvalSpec:
        """The evaluators' settings: the ``eval`` section's :class:`EvalSpec` fields with the
        study's tasks folder (the same for every split: :meth:`split_objectives` maps the tasks,
        the held-out map stays in ``EvalSpec.heldout``)."""
        settings = {name: getattr(self.eval, name) for name in EvalSpec.model_fields}
        return EvalSpec.model_validate({**settings, "tasks_path": self.tasks_path})

    def heldout_objectives(self) -> tuple[ObjectiveSpec, ...]:
        """The objectives with each task replaced by its held-out task; () without a mapping.

        Perplexity objectives have no task to map and are kept as they are.
        """
        return self.split_objectives("heldout")

    def split_objectives(self, split: Split) -> tuple[ObjectiveSpec, ...]:
        """The objectives scored on ``split``: ``"search"`` (each objective's ``search_tasks`` when
        it has them, else its tasks), ``"heldout"`` (``eval.heldout``) or ``"test"``
        (``eval.test``; both map ``tasks``, never the search tasks); () when that split has no
        mapping.

        Perplexity objectives have no task to map and are kept as they are.
        """
        if split == "search":
            return tuple(
                o.model_copy(update={"tasks": o.search_tasks, "search_tasks": ()})
                if o.search_tasks
                else o
                for o in self.objectives
            )
        mapping = self.eval.heldout if split == "heldout" else self.eval.test
        if not mapping:
            return ()
        mapped = []
        for obj in self.objectives:
            tasks = tuple(t.model_copy(update={"task": mapping[t.task]}) for t in obj.tasks)
            mapped.append(obj.model_copy(update={"tasks": tasks, "search_tasks": ()}))
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

        data = join_sections(self.model_dump(mode="json"), self._sections)
        data["storage"] = redact(self.storage)
        return data


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
    cfg = resolve_models(parse_config(data, path), path)
    check_paths(cfg, path)
    return cfg


def resolve_models(cfg: StudyConfig, path: str | Path = "<config>") -> StudyConfig:
    """The config with hub IDs among ``checkpoints`` and ``base_model`` replaced by their local
    snapshot folders (:func:`search.engine.hub.resolve_model`: fetched, or found in the cache
    offline); folders stay as written. Done once, here: workers and reports get folders."""
    from search.engine.hub import resolve_model

    checkpoints = tuple(
        resolve_model(p, f"{path}: checkpoints[{i}]") for i, p in enumerate(cfg.checkpoints)
    )
    base = resolve_model(cfg.base_model, f"{path}: base_model") if cfg.base_model else None
    return cfg.model_copy(update={"checkpoints": checkpoints, "base_model": base})


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
    items += [
        (field, p, False) for files in offered(cfg.strategies, "files") for field, p in files()
    ]
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
