"""The small error hierarchy every layer raises."""

from __future__ import annotations


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
