"""The one rule for external ids, used by every door events and items come in through: event
files (`dynrec.data.events.validate_frame`), item text files (`dynrec.text.read_item_texts`),
events written to a store (`dynrec.data.events.validate_events`) and the HTTP service's bodies
and paths (`dynrec.service.schemas`).

An id is a string of 1 to `MAX_ID_LENGTH` characters, without leading or trailing whitespace
(``" u1"`` and ``"u1"`` would otherwise be two users that a CSV round trip merges) and without
lone surrogates (not encodable as UTF-8: no file or store can hold them). An *item* id also holds
no comma, newline or carriage return: item ids are written comma-separated (``--history a,b``)
and one per line, and such an id could never be named there.

`id_problem` says what is wrong with one value (None when nothing); `check_user_id` /
`check_item_id` raise `DataError` naming the field; `id_problem_expr` is the same rule as a
vectorised Polars expression for whole columns.
"""

from __future__ import annotations

from typing import Literal

import polars as pl

from dynrec.errors import DataError

__all__ = [
    "EMPTY",
    "ITEM_ID_FORBIDDEN",
    "MAX_ID_LENGTH",
    "WHITESPACE",
    "IdKind",
    "check_item_id",
    "check_user_id",
    "id_problem",
    "id_problem_expr",
]

MAX_ID_LENGTH = 512
"""Characters in an id, at most."""

ITEM_ID_FORBIDDEN = (",", "\n", "\r")
"""Characters an item id may not hold."""

WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
"""Every character `str.isspace` calls whitespace, spelled out so that Python and Polars (whose
default strip misses ``\x1c``-``\x1f``) apply the same rule."""

IdKind = Literal["user", "item"]

EMPTY = "is empty or only whitespace"
"""`id_problem`'s answer for a blank id (the readers report it as a missing id)."""
PADDED = "has leading or trailing whitespace"
TOO_LONG = f"is longer than {MAX_ID_LENGTH} characters"
SURROGATE = "holds a lone surrogate (not encodable as UTF-8)"
ITEM_CHARS = "holds a comma, newline or carriage return (not allowed in item ids)"


def id_problem(value: str, kind: IdKind) -> str | None:
    """What is wrong with `value` as a `kind` id (``"is empty"``, ...), or None when it is valid."""
    stripped = value.strip(WHITESPACE)
    if not stripped:
        return EMPTY
    if value != stripped:
        return PADDED
    if len(value) > MAX_ID_LENGTH:
        return TOO_LONG
    if kind == "item" and ("," in value or "\n" in value or "\r" in value):  # ITEM_ID_FORBIDDEN
        return ITEM_CHARS
    if not value.isascii():  # only a non-ASCII id can hold a surrogate
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return SURROGATE
    return None


def _check(value: object, kind: IdKind, field: str, source: str | None, line: int | None) -> str:
    if not isinstance(value, str):
        got = type(value).__name__
        raise DataError(f"{kind} id must be a string, got {got}", source=source, line=line, field=field)
    problem = id_problem(value, kind)
    if problem is not None:
        raise DataError(f"{kind} id {_shown(value)} {problem}", source=source, line=line, field=field)
    return value


def check_user_id(
    value: object, *, field: str = "user_id", source: str | None = None, line: int | None = None
) -> str:
    """`value` when it is a valid user id (see the module docstring), else `DataError` naming
    `field` (and `source` / `line` when given)."""
    return _check(value, "user", field, source, line)


def check_item_id(
    value: object, *, field: str = "item_id", source: str | None = None, line: int | None = None
) -> str:
    """`value` when it is a valid item id (see the module docstring), else `DataError` naming
    `field` (and `source` / `line` when given)."""
    return _check(value, "item", field, source, line)


_WS_CLASS = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in WHITESPACE) + "]"
"""`WHITESPACE` as a regular-expression character class (Polars' regex syntax)."""


def id_problem_expr(column: str, kind: IdKind) -> pl.Expr:
    """Per row of the String column `column`: the `id_problem` reason, or null when the id is
    valid (a null id is left to the caller: it is null here too). Strings from files hold no lone
    surrogates (decoding refuses them), so that check is not repeated here. Anchored regular
    expressions rather than a strip and a comparison: about 0.06 s per million ids. Evaluate it
    once per column (``with_columns``) when several checks read it."""
    c = pl.col(column)
    expr = (
        pl.when(c.str.contains(f"^{_WS_CLASS}*$"))
        .then(pl.lit(EMPTY))
        .when(c.str.contains(f"^{_WS_CLASS}|{_WS_CLASS}$"))
        .then(pl.lit(PADDED))
        .when(c.str.len_chars() > MAX_ID_LENGTH)
        .then(pl.lit(TOO_LONG))
    )
    if kind == "item":
        expr = expr.when(c.str.contains(r"[,\n\r]")).then(pl.lit(ITEM_CHARS))
    return expr.otherwise(pl.lit(None, dtype=pl.String))


def _shown(value: str) -> str:
    """`value` for a message: repr, cut to 60 characters (ids can be very long)."""
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."
