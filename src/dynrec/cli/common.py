"""Shared pieces of the `dynrec` commands: error handling (`handled`, `error_line`, `_fail`),
option types and the parsers of ``--set``, ``--split`` and ``--ann``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from dynrec.errors import DynrecError

SplitOpt = Annotated[str, typer.Option("--split", help="loo (temporal leave-one-out) or time (global cut)")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="folder with datasets (else DYNREC_DATA_DIR, then shared/data next to the checkout, then "
        "~/.cache/dynrec/data; MovieLens is downloaded there when missing)",
    ),
]
ColumnsOpt = Annotated[
    str | None,
    typer.Option(
        "--columns",
        help="an event file's columns: user=COL,item=COL,time=COL,rating=COL,type=COL (any subset; "
        "time= empty: no timestamps). Without it, headers are recognised by common names (user_id, "
        "userId, uid; item_id, movieId, itemId, productId, asin; timestamp, time, ts, datetime; rating, "
        "score; event_type, event, type). Recorded with a trained model.",
    ),
]


F = TypeVar("F", bound=Callable[..., Any])


_DEBUG: ContextVar[bool] = ContextVar("dynrec_cli_debug", default=False)
"""The global ``--debug`` option of the running invocation (set by the app callback, which runs
before every command)."""


def error_line(exc: BaseException) -> str:
    """The one line a user sees for an exception: dynrec's own errors and file-system errors
    (the user's to fix) as they are; anything else (a bug) with its type and a hint."""
    if isinstance(exc, DynrecError | OSError):
        return f"error: {exc}"
    msg = str(exc).strip().splitlines()
    first = msg[0] if msg else ""
    return f"error: {type(exc).__name__}: {first} (run with --debug for the traceback)"


def handled(fn: F) -> F:
    """No traceback reaches a user: every exception a command raises becomes one ``error: ...``
    line on stderr and exit code 1 (see `error_line`). ``dynrec --debug CMD`` re-raises instead.
    The CLI framework's own exceptions (exits, aborts, usage errors: exit code 2) pass through."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if _DEBUG.get() or type(exc).__module__.startswith(("typer", "click")):
                raise
            typer.secho(error_line(exc), fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _parse_sets(sets: list[str] | None) -> dict[str, str]:
    """``--set key=value`` pairs (model options or run options: device, num_threads, progress,
    checkpoint_dir); values are parsed and checked against each option's type by the model layer."""
    out: dict[str, str] = {}
    for s in sets or []:
        k, eq, v = s.partition("=")
        if not eq or not k.strip():
            _fail(f"--set expects key=value, got {s!r}")
        out[k.strip()] = v.strip()
    return out


def _run_options(sets: dict[str, str], *, progress: bool) -> tuple[dict[str, str], Any]:
    """(model-option overrides, `RunOptions`) from ``--set`` pairs; progress bars unless --json."""
    from dynrec.models.config import RunOptions, split_overrides

    return split_overrides(sets, RunOptions(progress=progress))


def _split(value: str) -> Any:
    if value not in ("loo", "time"):
        _fail(f"--split must be 'loo' or 'time', got {value!r}")
    return value


AnnOpt = Annotated[
    str | None,
    typer.Option(
        "--ann",
        help="approximate retrieval through a FAISS index over the model's item table: hnsw or ivf "
        "(models that score by a dot product; default: exact)",
    ),
]
AnnSetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--ann-set",
        help="index option key=value, repeatable: m, ef_construction, ef_search (hnsw); nlist, nprobe "
        "(ivf); num_threads, seed",
    ),
]


def _ann_config(kind: str | None, sets: list[str] | None) -> Any:
    """The `AnnConfig` of ``--ann KIND --ann-set key=value ...`` (None without --ann)."""
    if kind is None:
        if sets:
            _fail("--ann-set needs --ann hnsw|ivf")
        return None
    from dynrec.models.retrieval import AnnConfig

    if kind not in ("hnsw", "ivf"):
        _fail(f"--ann must be 'hnsw' or 'ivf', got {kind!r}")
    return AnnConfig(kind=kind).with_overrides(_parse_sets(sets))  # type: ignore[arg-type]


def _table(metrics: dict[str, float]) -> str:
    keys = [k for k in metrics if "@" in k]
    w = max(len(k) for k in keys) if keys else 8
    lines = [f"{'metric':<{w}}  value", f"{'-' * w}  ------"]
    lines += [f"{k:<{w}}  {metrics[k]:.4f}" for k in keys]
    lines.append(f"{'n_users':<{w}}  {int(metrics.get('n_users', 0))}")
    return "\n".join(lines)
