"""The study spec: one YAML file says everything every worker needs to build the same study."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import optuna
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from objectives import Objective, SetupError, load_objective
from objectives.contract import OneOf, is_number

SPACES_ENV = "SEARCH_SPACES_DIR"


class SpecError(Exception):
    """A spec that cannot be used; the message names the file, the key and what is allowed."""


class NumbersLoader(yaml.SafeLoader):
    """YAML with numbers as people write them: ``1e-4`` and ``3e3`` are floats, as in YAML 1.2
    (PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent, so they are strings)."""


NumbersLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def read_yaml(text: str) -> Any:
    """A spec, or a ``--set`` value: safe YAML, with YAML 1.2's floats (``NumbersLoader``)."""
    return yaml.load(text, Loader=NumbersLoader)  # noqa: S506 - a SafeLoader


# One rule for every study name this service creates (the spec's ``name``, ``--name``): a name is
# also a folder (checkpoints, launch logs), part of a file name (the sbatch script) and a word in
# a shell script, so it holds no separator, no space, no markup and no leading dot. 200
# characters fit Optuna's study_name column (512), the ``.confirm`` companion, and one file name
# (255 bytes) with ``search-`` and ``.sbatch`` around it.
STUDY_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
STUDY_NAME_MAX = 200
STUDY_NAME_RULE = (f"lowercase letters, digits, '.', '_' and '-', starting with a letter or digit, "
                   f"at most {STUDY_NAME_MAX} characters")


def study_name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a new study's name, or None."""
    if len(name) > STUDY_NAME_MAX:
        return f"{len(name)} characters (expected {STUDY_NAME_RULE})"
    if not STUDY_NAME.fullmatch(name):
        return f"expected {STUDY_NAME_RULE}"
    return None


def check_study_name(name: str, source: str = "--name") -> str:
    """``name`` if it follows the study name rule; else SpecError, one line naming ``source``."""
    problem = study_name_problem(name)
    if problem:
        raise SpecError(f"{source} {name!r}: not a study name: {problem}")
    return name


def name_as_path(name: str) -> str:
    """A study name as one path component, for any name a storage holds (another tool may have
    created it without this rule): the name itself when it follows the rule, else a slug of it
    with a hash of the whole name, so that distinct names never share a folder and no name
    reaches outside the folder it is put in (no ``/``, no ``..``, never absolute)."""
    if study_name_problem(name) is None:
        return name
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip(".-_")[:64] or "study"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A number in a spec is finite: an infinite bound or a NaN target would be taken at its word.
Finite = Annotated[float, Field(allow_inf_nan=False)]


class FloatParam(_Strict):
    type: Literal["float"]
    low: Finite
    high: Finite
    log: bool = False
    step: Annotated[Finite, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log scale needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be combined")
        return self

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high


class IntParam(_Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log scale needs low > 0")
        return self

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: list[Union[bool, int, float, str]] = Field(min_length=1)

    def contains(self, value: Any) -> bool:
        return value in self.choices


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


class Metric(_Strict):
    name: str
    direction: Literal["maximize", "minimize"]


class Target(_Strict):
    """What the user is chasing: a figure, or ``beat: baseline`` (the target is to do better
    than the baseline, computed or not)."""

    value: Finite | None = None
    source: str
    beat: Literal["baseline"] | None = None

    @model_validator(mode="after")
    def _check(self) -> Target:
        if (self.beat is None) == (self.value is None):
            raise ValueError("give either a value or beat: baseline")
        return self


class Baseline(_Strict):
    """Where the user starts from: a figure from the seed, or one the objective measures on the
    study's own data when the study is created (``computed: true``, e.g. TF-IDF + logistic
    regression on the same splits); it is then stored on the study."""

    value: Finite | None = None
    source: str
    slices: dict[str, Finite] = {}
    computed: bool = False

    @model_validator(mode="after")
    def _check(self) -> Baseline:
        if self.computed == (self.value is not None):
            raise ValueError("give either a value or computed: true (measured when the study is created)")
        return self


class Line(_Strict):
    """Another figure drawn and tabulated beside the target: a published result, a second goal.
    ``metric`` names another figure the objective records on each trial (default: the study's)."""

    name: str
    value: Finite
    source: str
    metric: str | None = None


class Component(_Strict):
    """An Optuna sampler or pruner by class name, with keyword options."""

    type: str
    options: dict[str, Any] = {}

    def build(self, namespace: Any) -> Any:
        """The component from ``namespace`` (``optuna.samplers`` or ``optuna.pruners``)."""
        return getattr(namespace, self.type)(**self.options)


class Resources(_Strict):
    """What one trial runs on. More than one GPU: the worker trains the trial data-parallel
    under torchrun, one process per GPU (on a machine without GPUs, that many CPU processes)."""

    gpus_per_trial: int = Field(default=1, ge=1, le=64)


class KnownConfig(_Strict):
    name: str
    params: dict[str, Any]


class StudySpec(_Strict):
    name: str
    objective: str
    description: str = ""
    metric: Metric
    target: Target
    baseline: Baseline
    references: list[Line] = []
    fixed: dict[str, Any] = {}
    space: dict[str, Param]
    sampler: Component = Component(type="TPESampler")
    pruner: Component = Component(type="MedianPruner")
    resources: Resources | None = None  # absent: one GPU (or the CPU) per trial
    known_configs: list[KnownConfig] = []
    # The objective's defaults this spec's runs fill in: the ones recorded on the study when it was
    # created (``with_defaults``), so that a default changed in the code since does not change what
    # an existing study trains; None: today's.
    _defaults: dict[str, Any] | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _study_name(cls, name: str) -> str:
        """The spec's name is the study's name by default: the same rule as ``--name``."""
        problem = study_name_problem(name)
        if problem:
            raise ValueError(f"{name!r}: not a study name: {problem}")
        return name

    def better(self, a: float, b: float) -> bool:
        """Is ``a`` strictly better than ``b`` in the metric's direction?"""
        return a > b if self.metric.direction == "maximize" else a < b

    def reached(self, value: float) -> bool:
        """Has ``value`` reached the target? (Beating the baseline means doing strictly better.)"""
        if self.target.beat:
            return self.better(value, self.target.value)
        return not self.better(self.target.value, value)

    def with_baseline(self, value: float, source: str, slices: dict[str, float]) -> StudySpec:
        """This spec with a measured baseline filled in (and a ``beat: baseline`` target with it)."""
        baseline = self.baseline.model_copy(update={"value": value, "source": source, "slices": slices})
        update: dict[str, Any] = {"baseline": baseline}
        if self.target.beat:
            update["target"] = self.target.model_copy(update={"value": value})
        return self.model_copy(update=update)

    @property
    def objective_module(self) -> Objective:
        return load_objective(self.objective)

    def defaults(self) -> dict[str, Any]:
        """The objective defaults runs of this spec use: the study's recorded ones, else today's."""
        today = dict(self.objective_module.params)
        if self._defaults is None:
            return today
        # A parameter the objective no longer takes is dropped; one it took up since, today's default.
        return {**today, **{k: v for k, v in self._defaults.items() if k in today}}

    def with_defaults(self, defaults: dict[str, Any]) -> StudySpec:
        """This spec filling in ``defaults`` (those recorded on its study) instead of today's."""
        spec = self.model_copy()
        spec._defaults = dict(defaults)
        return spec

    def params(self, tuned: dict[str, Any]) -> dict[str, Any]:
        """The complete parameters of one run: objective defaults < fixed < tuned."""
        return {**self.defaults(), **self.fixed, **tuned}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The searched parameters of one trial, drawn by its study's sampler."""
        out = {}
        for name, param in self.space.items():
            if param.type == "float":
                out[name] = trial.suggest_float(name, param.low, param.high, log=param.log, step=param.step)
            elif param.type == "int":
                out[name] = trial.suggest_int(name, param.low, param.high, log=param.log, step=param.step)
            else:
                out[name] = trial.suggest_categorical(name, param.choices)
        return out

    def build_sampler(self) -> optuna.samplers.BaseSampler:
        return self.sampler.build(optuna.samplers)

    def build_pruner(self) -> optuna.pruners.BasePruner:
        return self.pruner.build(optuna.pruners)

    def as_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude_defaults=False)
        if self.resources is None:
            del data["resources"]  # so specs without it record (and hash) as they always did
        return data

    @property
    def gpus_per_trial(self) -> int:
        return self.resources.gpus_per_trial if self.resources else 1

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def with_overrides(self, overrides: dict[str, Any], source: str = "--set") -> StudySpec:
        """Pin parameters: a searched one leaves the space (and the known configs) for ``fixed``."""
        if not overrides:
            return self
        objective = self.objective_module
        for key, value in overrides.items():
            if key not in objective.params:
                raise SpecError(f"{source} {key}: not a parameter of objective {self.objective} "
                                f"(allowed: {', '.join(objective.params)})")
            problem = objective.check(key, value)
            if problem:
                raise SpecError(f"{source} {key}: {problem}")
        data = self.as_dict()
        data["fixed"] = {**data["fixed"], **overrides}
        data["space"] = {k: v for k, v in data["space"].items() if k not in overrides}
        data["known_configs"] = [
            {"name": c["name"], "params": {k: v for k, v in c["params"].items() if k not in overrides}}
            for c in data["known_configs"]
        ]
        spec = validate(data, source)
        return spec.with_defaults(self._defaults) if self._defaults is not None else spec


def spaces_dir() -> Path:
    return Path(os.environ.get(SPACES_ENV) or Path(__file__).resolve().parent.parent / "spaces")


def names_a_file(study: str) -> bool:
    """Is ``--study`` a path to a spec YAML file (rather than a spec name in spaces/)?"""
    return study.endswith((".yaml", ".yml")) or os.sep in study


def spec_path(study: str) -> Path:
    """``--study`` is a spec name in spaces/ or a path to a YAML file."""
    if names_a_file(study):
        return Path(study)
    return spaces_dir() / f"{study}.yaml"


def available_specs() -> list[str]:
    return sorted(p.stem for p in spaces_dir().glob("*.yaml"))


def load_spec(study: str, overrides: dict[str, Any] | None = None) -> StudySpec:
    path = spec_path(study)
    if not path.is_file():
        known = ", ".join(available_specs()) or "none"
        raise SpecError(f"no study spec {study!r}: {path} does not exist (specs in {spaces_dir()}: {known})")
    try:
        data = read_yaml(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}:{where} not valid YAML: {getattr(e, 'problem', e)}") from None
    spec = validate(data, str(path))
    return spec.with_overrides(overrides or {}, source=f"{path}: --set")


def validate(data: Any, source: str, *, recorded: bool = False) -> StudySpec:
    """``data`` as a spec, or SpecError in one line naming ``source``, the key and what is allowed.
    ``recorded``: a spec read back from its study, checked for shape only: its values were
    accepted when the study was created, and today's objective may accept others."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a study spec is a mapping (name, objective, metric, target, baseline, space, ...)")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        parts = [str(x) for x in err["loc"] if not str(x).startswith(("function-after", "tagged-union"))]
        if len(parts) >= 3 and parts[0] == "space" and parts[2] in {"float", "int", "categorical"}:
            del parts[2]  # pydantic's union tag (the param's type), not a key of the file
        loc = ".".join(parts)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key (allowed: {_allowed_keys(err['loc'])})"
        raise SpecError(f"{source}: {loc or 'spec'}: {msg}") from None
    _check_against_objective(spec, source, values=not recorded)
    if spec.target.beat and spec.baseline.value is not None and spec.target.value is None:
        spec = spec.with_baseline(spec.baseline.value, spec.baseline.source, spec.baseline.slices)
    return spec


def _allowed_keys(loc: tuple[Any, ...]) -> str:
    models = {(): StudySpec, ("metric",): Metric, ("target",): Target, ("baseline",): Baseline,
              ("sampler",): Component, ("pruner",): Component, ("resources",): Resources}
    parent = tuple(loc[:-1])
    if parent and parent[0] == "space" and len(parent) >= 3:
        model = {"float": FloatParam, "int": IntParam, "categorical": CategoricalParam}.get(str(parent[2]), FloatParam)
    elif parent and parent[0] == "known_configs":
        model = KnownConfig
    elif parent and parent[0] == "references":
        model = Line
    else:
        model = models.get(parent, StudySpec)
    return ", ".join(model.model_fields)


def _check_against_objective(spec: StudySpec, source: str, *, values: bool = True) -> None:
    try:
        objective = load_objective(spec.objective)
    except SetupError as e:
        raise SpecError(f"{source}: objective: {e}") from None
    allowed = objective.params
    if spec.metric.name != objective.metric:
        raise SpecError(f"{source}: metric.name: objective {spec.objective} returns {objective.metric!r}, not {spec.metric.name!r}")
    if spec.baseline.computed and objective.compute_baseline is None:
        raise SpecError(f"{source}: baseline.computed: objective {spec.objective} computes no baseline; give a value")
    recorded = objective.metrics
    for i, line in enumerate(spec.references):
        if line.metric is not None and line.metric not in recorded:
            raise SpecError(f"{source}: references.{i}.metric: objective {spec.objective} records no "
                            f"{line.metric!r} (allowed: {', '.join(recorded)})")
    for section in ("fixed", "space"):
        for key in getattr(spec, section):
            if key not in allowed:
                raise SpecError(f"{source}: {section}.{key}: not a parameter of objective {spec.objective} (allowed: {', '.join(allowed)})")
    for key in set(spec.fixed) & set(spec.space):
        raise SpecError(f"{source}: space.{key}: also in fixed; a parameter is either fixed or searched")
    if values:
        _check_values(spec, objective, source)
    names = set()
    for i, config in enumerate(spec.known_configs):
        if config.name in names:
            raise SpecError(f"{source}: known_configs.{i}.name: {config.name!r} appears twice")
        names.add(config.name)
        for key, value in config.params.items():
            where = f"{source}: known_configs.{i}.params.{key}"
            if key in spec.space:
                _refuse(objective.check(key, value) if values else None, where)
                if not spec.space[key].contains(value):
                    raise SpecError(f"{where}: {value!r} is outside the space ({_describe(spec.space[key])})")
            elif key in allowed:
                raise SpecError(f"{where}: not in the space; a known config sets searched parameters only")
            else:
                raise SpecError(f"{where}: not a parameter of objective {spec.objective}")
    for kind in ("sampler", "pruner"):
        _check_component(spec, kind, source, rehearse=values)


def _check_values(spec: StudySpec, objective: Objective, source: str) -> None:
    """Every value a run of this spec can get is one the objective accepts (``Objective.check``):
    the fixed ones, both ends of a searched range (every point, where the objective takes a few
    values only) and every choice."""
    for key, value in spec.fixed.items():
        _refuse(objective.check(key, value), f"{source}: fixed.{key}")
    for key, param in spec.space.items():
        where = f"{source}: space.{key}"
        rule = objective.accepts.get(key)
        if isinstance(param, CategoricalParam):
            kinds = {"true/false" if isinstance(c, bool) else "number" if is_number(c) else "string" for c in param.choices}
            if len(kinds) > 1:
                raise SpecError(f"{where}.choices: {param.choices} mixes {' and '.join(sorted(kinds))}; "
                                "choices are all numbers, all strings or all true/false")
            for choice in param.choices:
                _refuse(objective.check(key, choice), f"{where}.choices")
            continue
        if isinstance(param, FloatParam) and _is_int(objective.params[key]):
            raise SpecError(f"{where}.type: float, but {key} is an integer (default {objective.params[key]}); use type: int")
        if isinstance(rule, OneOf):
            if isinstance(param, FloatParam):
                raise SpecError(f"{where}.type: float, but {key} is {rule}; search it as categorical")
            # the first point outside the choices comes within len(choices) + 1 points
            for point in range(param.low, param.high + 1, param.step):
                _refuse(objective.check(key, point), where)
        for end in ("low", "high"):
            _refuse(objective.check(key, getattr(param, end)), f"{where}.{end}")


def _refuse(problem: str | None, where: str) -> None:
    if problem:
        raise SpecError(f"{where}: {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_COMPONENTS = {"sampler": (optuna.samplers, optuna.samplers.BaseSampler),
               "pruner": (optuna.pruners, optuna.pruners.BasePruner)}


def _components(kind: str) -> dict[str, type]:
    """The public ``optuna.samplers`` (or ``optuna.pruners``) classes a spec may name."""
    namespace, base = _COMPONENTS[kind]
    return {name: value for name in dir(namespace)
            if not name.startswith(("_", "Base")) and inspect.isclass(value := getattr(namespace, name))
            and issubclass(value, base)}


def _check_component(spec: StudySpec, kind: str, source: str, *, rehearse: bool = True) -> None:
    """The spec's sampler (or pruner) is an Optuna one and takes the options given; ``rehearse``:
    it works too: built with them, it runs two trials of this spec's space on a throwaway
    in-memory study (Optuna checks most options at first use). A failure names the option."""
    component: Component = getattr(spec, kind)
    known = _components(kind)
    if component.type not in known:
        raise SpecError(f"{source}: {kind}.type: {component.type!r} is not an optuna {kind} (allowed: {', '.join(known)})")
    accepted = inspect.signature(known[component.type]).parameters
    for option in component.options:
        if option not in accepted:
            raise SpecError(f"{source}: {kind}.options.{option}: not an option of {component.type} "
                            f"(allowed: {', '.join(accepted)})")
    error = _rehearse(spec, kind, component.options) if rehearse else None
    if error is None:
        return
    culprit = next((o for o in component.options if _rehearse(spec, kind, {o: component.options[o]})), None)
    if culprit is not None:
        raise SpecError(f"{source}: {kind}.options.{culprit}: {component.options[culprit]!r} refused by "
                        f"{component.type}: {error}")
    where = f"{kind}.options" if component.options else f"{kind}.type"
    raise SpecError(f"{source}: {where}: {component.type} fails with {_options(component.options)}: {error}")


def _rehearse(spec: StudySpec, kind: str, options: dict[str, Any]) -> str | None:
    """Why the spec's sampler (or pruner) with ``options`` fails on two trials of its space, in
    one line; None if it does not. The other component is Optuna's plainest (random, no pruning)."""
    built = {"sampler": optuna.samplers.RandomSampler(seed=0), "pruner": optuna.pruners.NopPruner()}
    try:
        with warnings.catch_warnings():  # an experimental component warns again when the study is built
            warnings.simplefilter("ignore")
            built[kind] = _components(kind)[getattr(spec, kind).type](**options)
            study = optuna.create_study(direction=spec.metric.direction, **built)
            for _ in range(2):
                trial = study.ask()
                spec.suggest(trial)
                trial.report(0.5, 1)
                trial.should_prune()
                study.tell(trial, 0.5)
    except Exception as e:  # noqa: BLE001 - whatever the component raises is the user's to fix
        return " ".join(f"{type(e).__name__}: {e}".split())
    return None


def _options(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items()) or "no options"


def _describe(param: Any) -> str:
    if isinstance(param, CategoricalParam):
        return f"choices {param.choices}"
    return f"{param.low}..{param.high}"
