"""Model configs and run options: `ModelConfig` (frozen, validated hyper-parameters, the base of
every model's config), `RunOptions` (how a run executes: device, threads, progress, checkpoints —
never saved), `split_overrides` (``key=value`` settings -> config keys and run options) and the
validated field types (`PositiveInt`, `Fraction`, ... = ``Annotated[..., Range(...)]``) both use.

Every field is checked on construction against its annotation; ``--set`` strings are parsed to
each field's type before that check.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self, Union, get_args, get_origin, get_type_hints

from dynrec.errors import DynrecError

__all__ = [
    "RUN_OPTION_KEYS",
    "Fraction",
    "ModelConfig",
    "NonNegFloat",
    "NonNegInt",
    "PositiveFloat",
    "PositiveInt",
    "Probability",
    "Range",
    "RunOptions",
    "format_number",
    "split_overrides",
]


# ---- typed, validated option fields ---------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """The interval a numeric option must lie in (attached with ``Annotated[int, Range(1)]``)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def allows(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def describe(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {format_number(self.lo)}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {format_number(self.hi)}")
        return " and ".join(parts)


def format_number(v: float) -> str:
    """`v` for messages: ``3`` for a whole number, else as Python prints it."""
    return str(int(v)) if float(v).is_integer() else str(v)


NonNegInt = Annotated[int, Range(0)]
PositiveInt = Annotated[int, Range(1)]
NonNegFloat = Annotated[float, Range(0.0)]
PositiveFloat = Annotated[float, Range(0.0, lo_open=True)]
Fraction = Annotated[float, Range(0.0, 1.0, hi_open=True)]
"""A probability that must leave something: [0, 1) (dropout rates, decay factors)."""
Probability = Annotated[float, Range(0.0, 1.0)]


def _unwrap(tp: Any) -> tuple[Any, list[Range]]:
    """(the type without ``Annotated``, its `Range` constraints)."""
    if get_origin(tp) is Annotated:
        base, *extra = get_args(tp)
        return base, [x for x in extra if isinstance(x, Range)]
    return tp, []


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _describe(tp: Any) -> str:
    """What a value of type `tp` may be, in words (for error messages)."""
    base, ranges = _unwrap(tp)
    if _is_union(base):
        return " or ".join(_describe(a) for a in get_args(base))
    if base is type(None):
        return "none"
    if get_origin(base) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(base))
    if get_origin(base) is tuple:
        return "a comma-separated list, each " + _describe(get_args(base)[0])
    kind = {bool: "a boolean", int: "an integer", float: "a finite number", str: "a string"}.get(
        base, getattr(base, "__name__", str(base))
    )
    rng = " and ".join(r.describe() for r in ranges)
    return f"{kind} {rng}" if rng else kind


def _conforms(tp: Any, value: Any) -> tuple[bool, Any]:
    """(whether `value` is a valid `tp`, the value normalised: int -> float, list -> tuple)."""
    base, ranges = _unwrap(tp)
    if _is_union(base):
        for arg in get_args(base):
            ok, v = _conforms(arg, value)
            if ok:
                return True, v
        return False, value
    if base is type(None):
        return value is None, value
    if get_origin(base) is Literal:
        return any(type(value) is type(a) and value == a for a in get_args(base)), value
    if get_origin(base) is tuple:
        if not isinstance(value, list | tuple):
            return False, value
        elem = get_args(base)[0]
        out = []
        for x in value:
            ok, x2 = _conforms(elem, x)
            if not ok:
                return False, value
            out.append(x2)
        return True, tuple(out)
    if base is bool:
        return isinstance(value, bool), value
    if base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif base is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - every option type is listed above
        raise TypeError(f"unsupported option type {base!r}")
    return ok and all(r.allows(value) for r in ranges), value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """`cls`'s resolved field annotations (with `Annotated` extras), computed once per class."""
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls, include_extras=True)
    return _HINTS[cls]


def _validate_fields(obj: Any) -> None:
    """Check every field of the frozen dataclass `obj` against its annotation (type, `Literal`
    choices, finiteness, `Range`); normalise ints given for floats and lists given for tuples."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        ok, norm = _conforms(hints[f.name], value)
        if not ok:
            raise DynrecError(
                f"{type(obj).__name__}: option {f.name}={value!r} is not allowed; "
                f"expected {_describe(hints[f.name])}"
            )
        if norm is not value:
            object.__setattr__(obj, f.name, norm)


def _parse_value(owner: str, key: str, tp: Any, raw: str) -> Any:
    """Parse a ``--set key=value`` string to the option's type (the result is validated after)."""
    base, _ = _unwrap(tp)
    text = raw.strip()
    if _is_union(base):
        args = get_args(base)
        if type(None) in args and text.lower() in ("none", "null", "auto"):
            return None
        rest = [a for a in args if a is not type(None)]
        return _parse_value(owner, key, rest[0], raw)
    if get_origin(base) is tuple:
        elem = get_args(base)[0]
        return tuple(_parse_value(owner, key, elem, x) for x in text.split(",") if x.strip())
    try:
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if base is int:
            return int(text)
        if base is float:
            return float(text)
    except ValueError:
        raise DynrecError(f"{owner}: option {key}={raw!r} does not parse; expected {_describe(tp)}") from None
    return text  # str and Literal (checked against the choices by validation)


def _coerce_settings(cls: type, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings for `cls`'s fields: strings (from ``--set``) parsed to each field's type, typed
    values (from TOML/JSON) kept; unknown keys are an error naming the options."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise DynrecError(f"{cls.__name__} has no option(s) {unknown}; options: {sorted(names)}")
    hints = _hints(cls)
    return {
        k: _parse_value(cls.__name__, k, hints[k], v) if isinstance(v, str) else v
        for k, v in settings.items()
    }


# ---- run options and model configs -----------------------------------------------------------------


_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


@dataclass(frozen=True)
class RunOptions:
    """How one run executes — never saved with a model (a model trained on ``cuda`` loads anywhere)."""

    device: str = "auto"
    """auto (cuda when available, else cpu) | cpu | cuda | cuda:N."""
    num_threads: NonNegInt = 0
    """torch (and ALS solver) threads; 0 = every CPU this process may run on (or OMP_NUM_THREADS)."""
    progress: bool = False
    """Show progress bars for training."""
    checkpoint_dir: str = ""
    """If set, the Trainer saves a resumable checkpoint there after every epoch and resumes from it."""
    precision: Literal["float32", "int8", "bf16"] = "float32"
    """CPU scoring precision of a loaded neural model: int8 (dynamic quantisation of its linear
    layers) or bf16 (CPUs with bf16 units only), applied by
    `dynrec.models.neural.quantize.apply_precision`; training always runs in the config's precision."""

    def __post_init__(self) -> None:
        _validate_fields(self)
        if not _DEVICE.match(self.device):
            raise DynrecError(
                f"RunOptions: option device={self.device!r} is not allowed; expected auto, cpu, cuda or cuda:N"
            )

    def replace(self, **changes: Any) -> RunOptions:
        return dataclasses.replace(self, **changes)


RUN_OPTION_KEYS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(RunOptions))


def split_overrides(
    overrides: Mapping[str, Any] | None, base: RunOptions | None = None
) -> tuple[dict[str, Any], RunOptions]:
    """Split ``key=value`` settings (``--set`` strings or typed TOML values) into model-config keys
    and `RunOptions` (device, num_threads, progress, checkpoint_dir) applied over `base`."""
    config: dict[str, Any] = {}
    run: dict[str, Any] = {}
    for k, v in (overrides or {}).items():
        (run if k in RUN_OPTION_KEYS else config)[k] = v
    opts = base or RunOptions()
    if run:
        opts = dataclasses.replace(opts, **_coerce_settings(RunOptions, run))
    return config, opts


@dataclass(frozen=True)
class ModelConfig:
    """Base of every model's frozen config dataclass (the project-wide hyper-parameter names).

    Every option is checked on construction (and on `dataclasses.replace`) against its annotation:
    a `Literal` lists the choices, `Annotated[..., Range(...)]` the allowed interval, floats must be
    finite. Subclasses add cross-option checks in their own ``__post_init__`` (calling this one)."""

    seed: NonNegInt = 42

    def __post_init__(self) -> None:
        _validate_fields(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        """A config from typed values (e.g. parsed JSON/TOML); unknown keys are an error."""
        if not isinstance(d, Mapping):
            raise DynrecError(f"{cls.__name__}: expected a table of options, got {type(d).__name__}")
        kw = {k: v for k, v in d.items()}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kw) - names)
        if unknown:
            raise DynrecError(f"{cls.__name__} has no option(s) {unknown}; options: {sorted(names)}")
        return cls(**kw)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The names of this config's options."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def with_overrides(self, overrides: Mapping[str, Any]) -> Self:
        """Apply ``key=value`` settings (``--set`` strings parsed to each option's type, or typed values)."""
        return dataclasses.replace(self, **_coerce_settings(type(self), overrides))

    def require(self, ok: bool, option: str, allowed: str) -> None:
        """A cross-option check for subclasses' ``__post_init__``: raise naming the option if not `ok`."""
        if not ok:
            raise DynrecError(
                f"{type(self).__name__}: option {option}={getattr(self, option)!r} is not allowed; {allowed}"
            )
