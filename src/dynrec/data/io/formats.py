"""Event file formats: the `Format` names and `detect_format` (from the file name; ``.txt`` by content)."""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path
from typing import Any, Literal

from dynrec.errors import DataError

Format = Literal["csv", "tsv", "parquet", "jsonl", "recbole", "ml-100k", "ml-dat", "user-lines", "pair-lines"]


def peek_lines(path: Path, n: int = 2000) -> list[str]:
    """The first `n` non-blank lines (gunzipped if needed), without reading the whole file."""
    with path.open("rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    opener: Any = gzip.open if gz else open
    out: list[str] = []
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.strip():
                    out.append(line)
                if len(out) >= n:
                    break
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"truncated or corrupt gzip file ({exc})", source=str(path)) from exc
    return out


def detect_format(path: Path) -> Format:
    """Event format from the file name (``.gz`` ignored); ``.txt``: per-user vs pair lines by content."""
    name = path.name.lower()
    stem = name[:-3] if name.endswith(".gz") else name
    if stem in ("u.item", "movies.dat") or stem.endswith(".item"):
        raise DataError("this is an item metadata file; read it with read_items()", source=str(path))
    if stem in ("u.user", "users.dat") or stem.endswith(".user"):
        raise DataError("this is a user metadata file, not events", source=str(path))
    if re.fullmatch(r"u(\.data|[1-5ab]\.(base|test))", stem):
        return "ml-100k"
    if stem.endswith(".dat"):
        return "ml-dat"
    if stem.endswith(".inter"):
        return "recbole"
    if stem.endswith(".parquet"):
        return "parquet"
    if stem.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if stem.endswith(".tsv"):
        return "tsv"
    if stem.endswith(".csv"):
        return "csv"
    if stem.endswith(".txt"):
        counts = [len(line.split()) for line in peek_lines(path)]
        return "pair-lines" if counts and max(counts) <= 2 else "user-lines"
    raise DataError(
        "unknown file format; use .csv/.tsv/.parquet/.jsonl/.inter/.dat/.txt or pass format=...",
        source=str(path),
    )


__all__ = ["Format", "detect_format", "peek_lines"]
