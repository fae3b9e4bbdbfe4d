"""`dynrec shifts`: the interest shifts an event file's events make, replayed through the online state."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from dynrec.cli.common import ColumnsOpt, DataDirOpt, handled


def _when(ts: int) -> str:
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return str(ts)


def _table(rows: list[dict[str, Any]]) -> str:
    head = ["user", "event", "time (UTC)", "score", "from -> to"]
    body = [
        [
            str(r["user_id"]),
            str(r["event_index"]),
            _when(int(r["timestamp"])),
            f"{r['score']:.3f}",
            f"{', '.join(r['from'])} -> {', '.join(r['to'])}",
        ]
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=False)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@handled
def shifts(
    model_dir: Annotated[Path, typer.Argument(help="saved model directory")],
    events: Annotated[Path, typer.Option("--events", help="events file (CSV/TSV/JSONL/Parquet, ...)")],
    strict: Annotated[bool, typer.Option("--strict", help="fail on the first invalid row")] = False,
    columns: ColumnsOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print the interest shifts that the events of --events make: they are replayed through the
    model's online state, each user the model trained on starting from their training history and
    any other user from an empty one; every shift the detector flags is printed with the position
    (0-based) among that user's events in the file of the event after which it was flagged.

    Order: the file is sorted by timestamp, stably (equal timestamps keep file order), and each
    user's events are appended after their training history — the online state takes a user's
    events in the order they arrive, so events older than the history still come after it.
    Invalid rows are reported by line and field and skipped (--strict: the first one is an error);
    events whose item the model does not know are counted and skipped.

    The detector's calibration is the model directory's shifts.json (written by `dynrec train`);
    without one it is calibrated on the training histories now (said on stderr). --json prints one
    object: {"shifts": [{"user_id", "event_index", "timestamp", "score", "from", "to"}, ...],
    "n_users", "n_events", ...}."""
    from dynrec.jobs.shift_replay import replay_shifts

    report = replay_shifts(model_dir, events, strict=strict, columns=columns, data_dir=data_dir)
    for line in report.notes:
        typer.echo(f"note: {line}", err=True)
    for line in report.invalid:
        typer.echo(f"skipped invalid row: {line}", err=True)
    if report.n_invalid_rows > len(report.invalid):
        typer.echo(f"... {report.n_invalid_rows - len(report.invalid)} more invalid rows", err=True)
    if report.n_unknown_items:
        typer.echo(f"skipped {report.n_unknown_items} events whose item the model does not know", err=True)
    out = report.to_json()
    if as_json:
        typer.echo(json.dumps(out))
        return
    if out["shifts"]:
        typer.echo(_table(out["shifts"]))
    typer.echo(
        f"{len(out['shifts'])} interest shifts in {report.n_events} events of {report.n_users} users "
        f"(detected in {report.space}, calibration: {report.calibration})"
    )
