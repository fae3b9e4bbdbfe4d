"""Export an online store's event log to a CSV file that ``dynrec train --dataset FILE`` reads.

The loop this closes: events posted to the service land in a store; exported, they train the next
model, which the service then loads. Columns: ``user_id,item_id,timestamp,event_type,value`` (the
value is the event's weight; `dynrec.data.io.events` reads ``value`` as the event value and
``event_type`` as its type). Rows come user by user, each user's events in arrival order (the
readers order each user's events by timestamp, ties by row). Note that the readers drop *exact*
duplicate rows by default (same user, item, timestamp, type and value).

The file is written next to its final name and renamed into place when complete, so a reader
never sees half an export; a name ending in ``.gz`` is gzip-compressed.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from dynrec.online.store import StateStore

__all__ = ["EXPORT_COLUMNS", "ExportResult", "export_events"]

EXPORT_COLUMNS = ("user_id", "item_id", "timestamp", "event_type", "value")


@dataclass(frozen=True)
class ExportResult:
    """What `export_events` wrote: the file, its events and the users they belong to."""

    path: str
    events: int
    users: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "events": self.events, "users": self.users}


def _open(path: Path) -> IO[str]:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "wb"), encoding="utf-8", newline="")
    return open(path, "w", encoding="utf-8", newline="")


def export_events(store: StateStore, path: str | Path) -> ExportResult:
    """Write every event `store` holds (`StateStore.iter_events`) to the CSV file `path`.

    Returns what was written (`ExportResult`). The store is read in chunks while it may keep
    taking events (see `StateStore.iter_events`); the file holds whole users' histories."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    n_events = n_users = 0
    last_user: str | None = None
    try:
        with _open(tmp) as f:
            w = csv.writer(f, lineterminator="\n")
            # QUOTE_MINIMAL quotes a field holding the line terminator ("\n") but not a lone "\r",
            # which the readers take as a line end: such a row is written with every field quoted
            quoted = csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_ALL)
            w.writerow(EXPORT_COLUMNS)
            for e in store.iter_events():
                if e.user_id != last_user:
                    n_users += 1
                    last_user = e.user_id
                row = (e.user_id, e.item_id, e.timestamp, e.event_type, repr(float(e.weight)))
                cr = "\r" in e.user_id or "\r" in e.item_id or "\r" in e.event_type
                (quoted if cr else w).writerow(row)
                n_events += 1
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(str(out), n_events, n_users)
