"""The strategy interface: what the study loop calls, never asking which strategy is on.

The study loop (:mod:`~search.study.launch`, :mod:`~search.study.worker`) is a service: it
proposes, merges, scores and tells. A strategy changes one of those steps for the studies whose
config asks for it; each lives in its own folder under :mod:`search.strategies`, whose registry
says when a config turns it on. The loop calls the hooks below, as Optuna's study calls
``BasePruner.prune`` and its callbacks.

Rules a :class:`Strategy` keeps (every hook has a do-nothing default):

- :meth:`Strategy.check` runs once, when the config is validated; it reads and validates the
  strategy's config section (:attr:`Strategy.section`, the raw value or ``None``, with
  :func:`parse_settings`) and raises ``ValueError("field.path: what is expected")``, the
  config's one-line error. Nothing heavy is imported or read before a hook needs it.
- :meth:`Strategy.precompute` runs in the launcher, before any worker starts, once per launch
  and only when :meth:`Strategy.needs_precompute` says so, given a :class:`Scratch` pool and
  model; it returns the lines to show.
- :meth:`Strategy.prepare_runtime` runs in each worker after its model and evaluator are built.
- :meth:`Strategy.offers` is the one extension point for everything else: an :class:`Offers`
  of the optional parts the loop, the resume and the export use (files to check, what is kept
  on disk, the resume signature, seed trials, a scorer, constraints, ...). A part left ``None``
  is not offered.
- A strategy keeps what it records on a trial under its own name in
  :attr:`~search.study.record.TrialRecord.strategies`; a strategy that stops a trial before its
  full evaluation records the trial that beat it there as ``stopped_by``
  (:data:`~search.study.record.STOPPED_BY`), and must add a constraint that such a trial
  violates (a stopped trial is never an answer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

if TYPE_CHECKING:
    import optuna

    from search.engine.pool import CheckpointPool
    from search.study.config import StudyConfig
    from search.study.record import TrialRecord
    from search.study.space import SearchSpace
    from search.study.worker import Runtime


_M = TypeVar("_M")


class Scorer(Protocol):
    """Scores the merge resident in a worker's model for one trial (:attr:`Offers.scorer`)."""

    def score(self, trial: optuna.Trial) -> TrialRecord:
        """The trial's score fields (:data:`~search.study.record.SCORE_FIELDS`)."""

    def spent(self, record: TrialRecord) -> int:
        """Examples the trial scored."""


@dataclass
class Scratch:
    """What :meth:`Strategy.precompute` gets: a pool with its tensors loaded, a model, the space."""

    pool: CheckpointPool
    model: Any
    tokenizer: Any
    space: SearchSpace


@dataclass(frozen=True)
class Offers:
    """The optional parts a strategy offers (:meth:`Strategy.offers`); ``None``: not offered.

    Attributes:
        files: ``() -> [(field, path)]``: files its settings name; they must exist before a
            study starts.
        protected: ``() -> [(what, path)]``: what it keeps on disk; an export never replaces it.
        signature: ``() -> {key: value}``: entries of the study's resume signature (a change
            refuses a resume).
        trial_cap: the most trials a study can run with it on.
        seed_trials: ``() -> {kind: [(label, params), ...]}``: known points to enqueue in a new
            study (called after :meth:`Strategy.precompute`).
        study_attrs: ``() -> {attr: value}``: study user attrs of what precompute did (a new
            study only).
        prepare_export: ``(pool) -> None``: called before a study's merge is materialized
            outside a worker (an export).
        scorer: ``(runtime, study) -> Scorer``: scores the resident merge in place of the plain
            full evaluation (at most one strategy offers it).
        constraints: ``(record) -> values``: constraint values it adds for the samplers (<= 0
            feasible, Optuna's convention).
        summary: ``(records) -> str``: a fragment of the launch's summary line.
    """

    files: Callable[[], Sequence[tuple[str, Path]]] | None = None
    protected: Callable[[], Sequence[tuple[str, Path]]] | None = None
    signature: Callable[[], Mapping[str, Any]] | None = None
    trial_cap: int | None = None
    seed_trials: Callable[[], Mapping[str, Sequence[tuple[str, dict[str, Any]]]]] | None = None
    study_attrs: Callable[[], Mapping[str, Any]] | None = None
    prepare_export: Callable[[CheckpointPool], None] | None = None
    scorer: Callable[[Runtime, optuna.Study], Scorer] | None = None
    constraints: Callable[[TrialRecord], tuple[float, ...]] | None = None
    summary: Callable[[Sequence[TrialRecord]], str] | None = None


class Strategy:
    """A strategy plugged into the study loop; see the module docstring for the rules.

    Attributes:
        name: its registry name (:data:`search.strategies.STRATEGIES`).
        cfg: the study config.
        section: its raw config section (``None`` when the config has none).
    """

    name: str = ""

    def __init__(self, cfg: StudyConfig, section: Any = None, name: str = "") -> None:
        self.cfg = cfg
        self.section = section
        self.name = name or self.name

    def check(self) -> None:
        """Validate this strategy's settings against the config (``ValueError`` naming a field)."""

    def needs_precompute(self, new_study: bool) -> bool:
        """Whether :meth:`precompute` has work for this launch."""
        return False

    def precompute(self, scratch: Scratch, new_study: bool) -> list[str]:
        """Work done once before the workers start; the lines to show."""
        return []

    def prepare_runtime(self, runtime: Runtime) -> None:
        """Called in each worker once its model and evaluator are built."""

    def offers(self) -> Offers:
        """The optional parts it offers (see :class:`Offers`)."""
        return Offers()


class SubsetScoring(Strategy):
    """What the strategies that score part of a trial's examples share (staged and estimated
    scoring): the refusal of perplexity objectives, the evaluator's example layout, and the
    offers of a scorer, the constraint of stopped trials and a summary fragment.

    A subclass sets :attr:`section_path` (its config section, as the one-line errors name it),
    :attr:`what` (how those errors name the strategy), :attr:`fields` (the dataclass it records
    on a trial: ``fields.of(record, name)`` is ``None`` or has a ``violation``, > 0 for a
    stopped trial), and defines :meth:`scorer` and :meth:`summary`.
    """

    section_path: ClassVar[str] = ""
    what: ClassVar[str] = ""
    fields: ClassVar[Any] = None

    def refuse_ratios(self, needs: str) -> None:
        """A ``ValueError`` naming the first perplexity objective (``needs``: why it cannot be
        scored in parts, ending the sentence "scores perplexity, a ratio over the whole file,
        ...")."""
        for i, obj in enumerate(self.cfg.objectives):
            if obj.evaluator == "perplexity":
                raise ValueError(
                    f"{self.section_path}: objectives[{i}] ({obj.name!r}) scores perplexity, a "
                    f"ratio over the whole file, {needs}: set {self.section_path}: null or drop "
                    "that objective"
                )

    @classmethod
    def layout(cls, runtime: Runtime) -> Any:
        """The evaluator's example layout; its refusal names this strategy's section."""
        from search.errors import UserError

        try:
            return runtime.evaluator.example_layout()
        except UserError as exc:
            raise UserError(
                f"{exc}; {cls.what} ({cls.section_path}) needs scores that are means of "
                f"per-example values (acc, exact_match, ...): set {cls.section_path}: null"
            ) from None

    def offers(self) -> Offers:
        return Offers(scorer=self.scorer, constraints=self.constraints, summary=self.summary)

    def scorer(self, runtime: Runtime, study: optuna.Study) -> Scorer:
        raise NotImplementedError

    def constraints(self, record: TrialRecord) -> tuple[float, ...]:
        # > 0: stopped; 0 for a trial scored in full, or scored before the strategy was on
        fields = self.fields.of(record, self.name)
        return (float(fields.violation if fields else 0.0),)

    def summary(self, records: Sequence[TrialRecord]) -> str:
        raise NotImplementedError


def split_sections(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A raw config without the strategies' sections, and those sections by strategy name.

    A section is read at its path (:attr:`~search.strategies.StrategyEntry.section`) or at a
    deprecated one (one :class:`~search.errors.DeprecatedSetting` warning); both at once is a
    ``ValueError``. The study config keeps the sections for the strategies to validate.
    """
    from search.errors import deprecated
    from search.strategies import STRATEGIES

    rest = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    sections: dict[str, Any] = {}
    for name, entry in STRATEGIES.items():
        for path in (entry.section, *entry.deprecated):
            *parents, key = path.split(".")
            holder: Any = rest
            for part in parents:
                holder = holder.get(part) if isinstance(holder, dict) else None
            if not isinstance(holder, dict) or key not in holder:
                continue
            if name in sections:
                raise ValueError(f"{path}: the old name of {entry.section}; give only one")
            if path != entry.section:
                deprecated(path, entry.section)
            sections[name] = holder.pop(key)
    return rest, sections


def join_sections(data: dict[str, Any], sections: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (a config as JSON) with the strategies' sections back at their paths."""
    from search.strategies import STRATEGIES

    for name, value in sections.items():
        *parents, key = STRATEGIES[name].section.split(".")
        holder = data
        for part in parents:
            holder = holder.setdefault(part, {})
        holder[key] = value
    return data


def build_strategies(cfg: StudyConfig, sections: Mapping[str, Any]) -> tuple[Strategy, ...]:
    """The strategies ``cfg`` turns on (``sections``: name -> raw section or ``None``), each
    checked (``ValueError`` naming the field). At most one of them may score trials in its own
    way (:attr:`Offers.scorer`): two are refused, naming both sections."""
    from search.strategies import STRATEGIES

    strategies = tuple(
        entry.load()(cfg, sections.get(name), name)
        for name, entry in STRATEGIES.items()
        if entry.on(cfg, sections.get(name))
    )
    for strategy in strategies:
        strategy.check()
    scoring = [s.name for s in strategies if s.offers().scorer is not None]
    if len(scoring) > 1:
        first, second = (STRATEGIES[n].section for n in scoring[:2])
        raise ValueError(
            f"{second}: scores each trial in its own way, as {first} does; the study loop takes "
            f"one: set {first}: null or {second}: null"
        )
    return strategies


def offered(strategies: Sequence[Strategy], part: str) -> list[Any]:
    """The ``part`` (an :class:`Offers` attribute) of every strategy that offers it, in order."""
    return [p for s in strategies if (p := getattr(s.offers(), part)) is not None]


def parse_settings(model: type[_M], value: Any, field: str) -> _M:
    """A strategy's config section validated into its pydantic ``model``; pydantic's errors
    become the config's one-line ``ValueError`` naming ``field`` (e.g. ``eval.staged.rungs``)."""
    from pydantic import ValidationError

    from search.errors import one_line

    try:
        return model.model_validate(value or {})
    except ValidationError as exc:
        line = one_line(exc, model)
        head = line.split(":", 1)[0].split(".", 1)[0].split("[", 1)[0]
        raise ValueError(f"{field}{'.' if head in model.model_fields else ': '}{line}") from None
