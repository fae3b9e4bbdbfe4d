"""Core model interfaces: `ModelConfig` (frozen, validated hyper-parameters), `RunOptions` (how a
run executes: device, threads, progress, checkpoints — never saved) and `Recommender`.

A recommendation is a function of the user's history: every model scores a
`dynrec.data.query.QueryBatch` of time-ordered histories, so real-time updates, cold users,
offline evaluation, streaming replay and serving all share one path. What a model can do beyond
scoring (incremental state, partial fit, item embeddings, explanations) it declares by
implementing the protocols in `dynrec.models.capabilities`.

Config vs state vs run options: the config (`config.json`) says what was trained — values decided
at fit time (e.g. a dropout chosen by dataset size) are written back into it; the learned state is
`model.safetensors`; run options belong to the process and are never saved, so a model trained on
a GPU loads on a CPU-only host. `Recommender.load` validates every file before use and refuses a
damaged or tampered model directory with a `DynrecError` naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import secrets
import stat
import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, Union, get_args, get_origin, get_type_hints

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dynrec.data.query import QueryBatch, topk_stable
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError, NotFittedError

log = logging.getLogger(__name__)

__all__ = [
    "Fraction",
    "ModelConfig",
    "NonNegFloat",
    "NonNegInt",
    "PositiveFloat",
    "PositiveInt",
    "Probability",
    "QueryBatch",
    "Range",
    "Recommender",
    "RunOptions",
    "TensorFileError",
    "expect",
    "expect_only",
    "expect_state_dict",
    "save_tensors",
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
            parts.append(f"{'>' if self.lo_open else '>='} {_num(self.lo)}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {_num(self.hi)}")
        return " and ".join(parts)


def _num(v: float) -> str:
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


# ---- learned-state validation (used by every model's `load_tensors`) ------------------------------


class TensorFileError(DynrecError):
    """A model's safetensors file holds a tensor that does not fit its config and vocabulary."""


def expect(
    tensors: Mapping[str, torch.Tensor],
    name: str,
    shape: tuple[int | None, ...],
    dtype: torch.dtype,
    *,
    finite: bool = True,
    low: float | None = None,
    high: int | None = None,
    max_rows: int | None = None,
) -> torch.Tensor:
    """The tensor `name`, checked: present, `shape` (None = any size on that axis), `dtype`, all
    values finite (floats), every value ``>= low`` and (index tensors) ``< high``, and at most
    `max_rows` rows (e.g. one per item of a vocabulary that may have grown since fit).
    Raises `TensorFileError` naming the tensor (callers add the file)."""
    if name not in tensors:
        raise TensorFileError(f"tensor {name!r} is missing")
    t = tensors[name]
    if t.dtype != dtype:
        raise TensorFileError(f"tensor {name!r} has dtype {t.dtype}, expected {dtype}")
    if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape, strict=True)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise TensorFileError(f"tensor {name!r} has shape {list(t.shape)}, expected {want}")
    if max_rows is not None and not 1 <= t.shape[0] <= max_rows:
        raise TensorFileError(f"tensor {name!r} has {t.shape[0]} rows, expected 1 to {max_rows}")
    if finite and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        raise TensorFileError(f"tensor {name!r} has non-finite values (NaN or inf)")
    if t.numel():
        if low is not None and float(t.min()) < low:
            raise TensorFileError(
                f"tensor {name!r} has values down to {t.min().item()}, expected >= {_num(low)}"
            )
        if high is not None and int(t.max()) >= high:
            raise TensorFileError(f"tensor {name!r} has values up to {t.max().item()}, expected < {high}")
    return t


def expect_only(tensors: Mapping[str, torch.Tensor], names: set[str] | frozenset[str]) -> None:
    """No tensors besides `names` (an unknown tensor means a different model or a damaged file)."""
    extra = sorted(set(tensors) - set(names))
    if extra:
        raise TensorFileError(f"unexpected tensor(s) {extra}")
    missing = sorted(set(names) - set(tensors))
    if missing:
        raise TensorFileError(f"tensor(s) {missing} are missing")


def expect_state_dict(net: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors` checked against a freshly built `net`'s state_dict: the same names, shapes and
    dtypes, and finite floating-point values. Returns them in the net's key order."""
    ref = net.state_dict()
    expect_only(tensors, frozenset(ref))
    for k, v in ref.items():
        expect(tensors, k, tuple(v.shape), v.dtype)
    return {k: tensors[k] for k in ref}


# ---- the model interface ---------------------------------------------------------------------------

LEGACY_CONFIG_KEYS: frozenset[str] = RUN_OPTION_KEYS
"""Keys that older config.json files kept among the hyper-parameters (now `RunOptions`): ignored."""


class Recommender(ABC):
    """Scores items for users given their histories.

    Contract: ``fit`` learns weights; ``score``/``recommend`` are pure reads (never mutate);
    ``update(events)`` (where supported) is the only mutating call after fit. Scores are a float32
    tensor [B, n_items] where column 0 (padding) is -inf.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        self.options = RunOptions()
        """How this process runs the model (device, threads, progress, checkpoints; set by `fit`,
        `load` or `create_model`); never saved."""
        self.item_vocab: Vocabulary | None = None
        self.user_vocab: Vocabulary | None = None
        self.meta: dict[str, Any] = {}

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.item_vocab is not None

    @property
    def n_items(self) -> int:
        if self.item_vocab is None:
            raise NotFittedError(f"{self.name} is not fitted")
        return self.item_vocab.size

    def fit(self, data: Any, valid: Any = None, *, options: RunOptions | None = None) -> Self:
        """Learn from `data` (InteractionData); `valid` (EvalSet) is used for model selection only.
        `options` (default: the model's `options`) say how to run; values the model decides at fit
        time (e.g. by dataset size) are written back into `config`."""
        if options is not None:
            self.options = options
        torch.manual_seed(self.config.seed)
        self.item_vocab = data.item_vocab
        self.user_vocab = data.user_vocab
        self._fit(data, valid)
        return self

    @abstractmethod
    def _fit(self, data: Any, valid: Any) -> None: ...

    def fit_passes(self) -> int:
        """Passes over the data a fit makes (epochs / sweeps; 1 for one-pass models): the compute
        measure of a refit in replay reports."""
        return 1

    @abstractmethod
    def score(self, batch: QueryBatch) -> torch.Tensor:
        """[B, n_items] float32 scores; column 0 is -inf."""

    def recommend(
        self, batch: QueryBatch, k: int = 10, *, exclude_seen: bool = True, exclude: QueryBatch | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (indices [B, k], scores [B, k]) sorted by descending score, ties by lower index.
        Seen items (the history, or `exclude`) are removed when `exclude_seen`."""
        with torch.no_grad():
            scores = self.score(batch).clone()
            if exclude_seen:
                rows, cols = (exclude or batch).seen_mask_indices()
                scores[rows, cols] = -torch.inf
            scores[:, 0] = -torch.inf
            return topk_stable(scores, k)

    # ---- persistence: safetensors + config.json + vocab ------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """Learned state to save (override)."""
        return {}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore learned state (override). Called by `load` after config, meta and both
        vocabularies are set; must check every tensor (`expect`, `expect_only`,
        `expect_state_dict`) before use and raise `DynrecError` for anything that does not fit."""
        expect_only(tensors, frozenset())

    def meta_size(self, key: str, vocab: Vocabulary | None) -> int:
        """The size `meta[key]` recorded at fit time (e.g. ``n_items``), checked: an integer in
        ``[1, vocab.size]`` (a vocabulary may grow after fit, never shrink)."""
        v = self.meta.get(key)
        limit = vocab.size if vocab is not None else None
        if not isinstance(v, int) or isinstance(v, bool) or v < 1 or (limit is not None and v > limit):
            raise DynrecError(f"meta {key!r} is {v!r}, expected an integer in [1, {limit}]")
        return v

    def save(self, path: str | Path) -> Path:
        if self.item_vocab is None or self.user_vocab is None:
            raise NotFittedError(f"{self.name} is not fitted; nothing to save")
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors().items()}
        save_tensors(tensors, out / "model.safetensors")
        (out / "config.json").write_text(
            json.dumps({"model": self.name, "config": self.config.to_dict(), "meta": self.meta}, indent=2)
        )
        (out / "items.json").write_text(self.item_vocab.to_json())
        (out / "users.json").write_text(self.user_vocab.to_json())
        return out

    @classmethod
    def load(cls, path: str | Path, *, options: RunOptions | None = None) -> Recommender:
        """A saved model of any registered kind (`read_model` with the registry's name lookup, which
        the `dynrec.models` package hands to `use_model_lookup` when it is imported: this module
        cannot import the registry, which imports every model module and this one)."""
        lookup = _Wiring.model_lookup
        if lookup is None:  # only if this file were imported outside its package
            raise DynrecError("no model registry is wired in: import dynrec.models.registry first")
        return read_model(path, lookup, options=options)


ModelLookup = Callable[[str], type[Recommender]]
"""A saved model's name -> its class (`dynrec.models.registry.get_model_class`)."""


class _Wiring:
    model_lookup: ModelLookup | None = None


def use_model_lookup(lookup: ModelLookup) -> None:
    """Resolve saved models' names with `lookup` in `Recommender.load` (wired once, by the
    `dynrec.models` package, to the registry's `get_model_class`)."""
    _Wiring.model_lookup = lookup


def read_model(
    path: str | Path, model_class: ModelLookup, *, options: RunOptions | None = None
) -> Recommender:
    """A saved model, every file checked before use (config.json, items.json, users.json,
    model.safetensors against config and vocabularies); anything damaged raises `DynrecError`
    naming the file. `model_class` turns the saved model name into its class (the registry's
    lookup). Keys of older config.json files that are now run options are ignored."""
    p = Path(path)
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise DynrecError(f"{p} is not a saved dynrec model (no config.json)")
    spec = _read_json(cfg_file)
    if not isinstance(spec, dict):
        raise DynrecError(f"{cfg_file}: expected a JSON object with keys 'model' and 'config'")
    name, raw_cfg, meta = spec.get("model"), spec.get("config", {}), spec.get("meta", {})
    if not isinstance(name, str):
        raise DynrecError(f"{cfg_file}: 'model' must be a model name, got {name!r}")
    if not isinstance(raw_cfg, dict):
        raise DynrecError(f"{cfg_file}: 'config' must be an object of options")
    if not isinstance(meta, dict):
        raise DynrecError(f"{cfg_file}: 'meta' must be an object")
    try:
        model_cls = model_class(name)
        legacy = sorted(set(raw_cfg) & LEGACY_CONFIG_KEYS)
        if legacy:
            log.info("%s: ignoring run options %s saved by an older version", cfg_file, legacy)
        config = model_cls.config_class.from_dict({k: v for k, v in raw_cfg.items() if k not in legacy})
    except DynrecError as exc:
        raise DynrecError(f"{cfg_file}: {exc}") from None
    model = model_cls(config)
    model.options = options if options is not None else RunOptions()
    model.meta = dict(meta)
    model.item_vocab = _read_vocab(p / "items.json")
    model.user_vocab = _read_vocab(p / "users.json")
    weights = p / "model.safetensors"
    try:
        tensors = load_file(str(weights))
    except FileNotFoundError:
        raise DynrecError(f"{weights}: file not found") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DynrecError(f"{weights}: not a readable safetensors file ({exc})") from None
    try:
        model.load_tensors(tensors)
    except TensorFileError as exc:
        raise DynrecError(f"{weights}: {exc}") from None
    except DynrecError as exc:  # e.g. sizes in meta that do not fit the vocabularies
        raise DynrecError(f"{cfg_file}: {exc}") from None
    return model


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """safetensors' `save_file`, then the permission bits any new file gets here (0666 less the
    umask): its writer creates files 0600, unlike every other file of a model directory."""
    p = Path(path)
    save_file(dict(tensors), str(p))
    os.chmod(p, _new_file_mode(p.parent))
    return p


def _new_file_mode(folder: Path) -> int:
    """The permission bits a file created in `folder` gets now, read from a probe file (reading
    the umask itself, `os.umask`, would change it for every thread of the process meanwhile)."""
    probe = folder / f".mode-probe.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        return stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DynrecError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DynrecError(f"{path}: not valid JSON ({exc})") from None


def _read_vocab(path: Path) -> Vocabulary:
    ids = _read_json(path)
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DynrecError(f"{path}: expected a JSON list of id strings")
    try:
        return Vocabulary.from_unique(ids)
    except ValueError as exc:
        raise DynrecError(f"{path}: {exc}") from None
