"""`SQLiteStore`: the `StateStore` and `VersionStore` in one SQLite file, shared by the threads and
processes that open it."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np

from dynrec.data.events import Event, validate_events
from dynrec.errors import DynrecError
from dynrec.online.store.protocol import (
    EVENT_ID_WINDOW,
    Appended,
    CachedState,
    History,
    UserStamp,
    _limit,
    decode_state,
    encode_state,
    repeated_in_batch,
)
from dynrec.online.store.versions import Lease, Tombstone, VersionRecord

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_PAGES", "SQLiteStore"]

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    ts INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    weight REAL NOT NULL DEFAULT 1.0
)""",
    "CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, generation INTEGER NOT NULL, "
    "n_events INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', 0)",
    """CREATE TABLE IF NOT EXISTS states (
    user_id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    n_events INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    state BLOB NOT NULL
)""",
    "CREATE TABLE IF NOT EXISTS versions (id TEXT PRIMARY KEY, created REAL NOT NULL, record TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pointers (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tombstones (generation INTEGER PRIMARY KEY AUTOINCREMENT, "
    "user_id TEXT NOT NULL, deleted_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL, "
    "note TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS event_ids (user_id TEXT NOT NULL, event_id TEXT NOT NULL, "
    "pos INTEGER NOT NULL, PRIMARY KEY (user_id, event_id)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS event_ids_by_user_pos ON event_ids (user_id, pos)",
]
_INDEX = "CREATE INDEX IF NOT EXISTS events_by_user_pos ON events (user_id, pos)"
CHECKPOINT_PAGES = 8192  # WAL pages between checkpoints (SQLite's default: 1,000)
_ID_CHUNK = 500  # event ids per "IN (...)" lookup (SQLite's limit on parameters is 32766 or 999)


@contextmanager
def _transaction(conn: sqlite3.Connection, begin: str) -> Iterator[None]:
    conn.execute(begin)
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SQLiteStore:
    """One SQLite file (stdlib `sqlite3`, WAL journal): ``events`` (user, item, event_type, ts,
    pos = 1-based position in the user's generation, weight), ``users`` (generation, event count),
    ``meta`` (the generation counter), ``states`` (safetensors-serialised model states) and
    ``event_ids`` (the ids of each user's last `EVENT_ID_WINDOW` events, with their positions).

    Safe to share between threads (one connection behind a lock) and between processes: every
    write is one ``BEGIN IMMEDIATE`` transaction, reads of several rows one read transaction
    (WAL gives it a consistent snapshot). A file written before generations existed is migrated
    on open (its cached states are dropped: they are rebuilt from the histories); one written
    before event weights existed gets the column, every held event weighing 1.0.
    `timeout`: seconds to wait for another process's write lock. `checkpoint_pages`: the WAL is
    copied back into the database file (and synced) once it holds this many pages. SQLite's
    default, 1,000 pages, checkpoints every few ingest requests: each 100-event batch dirties some
    200 pages scattered over the events index; `CHECKPOINT_PAGES` (a WAL of about 32 MB between
    checkpoints) lets a page rewritten by many batches be copied once (`benchmarks/serve_load`).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        timeout: float = 10.0,
        checkpoint_pages: int = CHECKPOINT_PAGES,
    ) -> None:
        self.path = Path(path)
        self.checkpoint_pages = checkpoint_pages
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL"):
            raise DynrecError(f"synchronous must be OFF, NORMAL or FULL, not {synchronous!r}")
        if (
            isinstance(checkpoint_pages, bool)
            or not isinstance(checkpoint_pages, int)
            or checkpoint_pages < 1
        ):
            raise DynrecError(f"checkpoint_pages must be an integer >= 1, not {checkpoint_pages!r}")
        try:
            self._conn = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None, timeout=timeout
            )
        except sqlite3.Error as exc:
            raise DynrecError(f"cannot open state store {self.path}: {exc}") from exc
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._conn.execute(f"PRAGMA wal_autocheckpoint={checkpoint_pages}")
            with self._write():
                cols = {r[1] for r in self._conn.execute("PRAGMA table_info(events)")}
                if cols and "pos" not in cols:
                    self._migrate()
                if cols and "weight" not in cols:
                    log.warning(
                        "migrating state store %s: adding event weights (1.0 for held events)", self.path
                    )
                    self._conn.execute("ALTER TABLE events ADD COLUMN weight REAL NOT NULL DEFAULT 1.0")
                for stmt in _SCHEMA:
                    self._conn.execute(stmt)
                self._conn.execute(_INDEX)

    def _migrate(self) -> None:
        """Add positions, users with fresh generations and the counter to a file of the earlier
        layout (events in arrival order, states without generation)."""
        log.warning("migrating state store %s: adding per-user generations; cached states dropped", self.path)
        c = self._conn
        c.execute("ALTER TABLE events ADD COLUMN pos INTEGER NOT NULL DEFAULT 0")
        c.execute(
            "UPDATE events SET pos = r.p FROM (SELECT seq AS s, "
            "ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY seq) AS p FROM events) AS r WHERE seq = r.s"
        )
        c.execute("DROP TABLE IF EXISTS states")
        for stmt in _SCHEMA[1:4]:
            c.execute(stmt)
        c.execute(
            "INSERT INTO users (user_id, generation, n_events) SELECT user_id, "
            "ROW_NUMBER() OVER (ORDER BY user_id), COUNT(*) FROM events GROUP BY user_id"
        )
        c.execute("UPDATE meta SET value = (SELECT COUNT(*) FROM users) WHERE key = 'generation'")

    def _write(self) -> AbstractContextManager[None]:
        """A write transaction: takes the file's write lock at once (the caller holds self._lock)."""
        return _transaction(self._conn, "BEGIN IMMEDIATE")

    def _read(self) -> AbstractContextManager[None]:
        """A read transaction: one consistent snapshot for several statements."""
        return _transaction(self._conn, "BEGIN")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stamp(self, user: str) -> UserStamp:
        row = self._conn.execute(
            "SELECT generation, n_events FROM users WHERE user_id = ?", (user,)
        ).fetchone()
        return UserStamp() if row is None else UserStamp(int(row[0]), int(row[1]))

    def _stamps(self, users: Sequence[str]) -> dict[str, UserStamp]:
        """`_stamp` of each of `users`, in one query per `_ID_CHUNK` users."""
        out = dict.fromkeys(users, UserStamp())
        for a in range(0, len(users), _ID_CHUNK):
            part = users[a : a + _ID_CHUNK]
            for user, gen, n in self._conn.execute(
                f"SELECT user_id, generation, n_events FROM users WHERE user_id IN ({', '.join('?' * len(part))})",
                part,
            ):
                out[str(user)] = UserStamp(int(gen), int(n))
        return out

    def _applied_ids(self, evs: Sequence[Event], skipped: set[int]) -> None:
        """Add to `skipped` the positions of the events whose id the store holds for their user."""
        by_user: dict[str, list[int]] = {}
        for i, e in enumerate(evs):
            if e.event_id is not None and i not in skipped:
                by_user.setdefault(e.user_id, []).append(i)
        for user, where in by_user.items():
            held: set[str] = set()
            for a in range(0, len(where), _ID_CHUNK):
                ids = [evs[i].event_id for i in where[a : a + _ID_CHUNK]]
                held.update(
                    str(r[0])
                    for r in self._conn.execute(
                        f"SELECT event_id FROM event_ids WHERE user_id = ? AND event_id IN "
                        f"({', '.join('?' * len(ids))})",
                        (user, *ids),
                    )
                )
            skipped.update(i for i in where if evs[i].event_id in held)

    def _keep_ids(self, rows: list[tuple[str, str, int]], stamps: dict[str, UserStamp]) -> None:
        """Record the applied events' ids (user, event id, position) and drop those of events
        before each user's last `EVENT_ID_WINDOW` (`stamps`: the users' stamps after the batch)."""
        self._conn.executemany("INSERT INTO event_ids (user_id, event_id, pos) VALUES (?, ?, ?)", rows)
        for user in dict.fromkeys(r[0] for r in rows):
            if stamps[user].n_events > EVENT_ID_WINDOW:
                self._conn.execute(
                    "DELETE FROM event_ids WHERE user_id = ? AND pos <= ?",
                    (user, stamps[user].n_events - EVENT_ID_WINDOW),
                )

    def append(self, events: Iterable[Event]) -> Appended:
        evs = validate_events(events)
        if not evs:
            return Appended({})
        skipped = repeated_in_batch(evs)
        with self._lock, self._write():
            if any(e.event_id is not None for e in evs):
                self._applied_ids(evs, skipped)
            applied = [e for i, e in enumerate(evs) if i not in skipped] if skipped else evs
            counts: dict[str, int] = {}
            for e in applied:
                counts[e.user_id] = counts.get(e.user_id, 0) + 1
            now = self._stamps(list(counts))
            new = [u for u in counts if now[u].generation == 0]  # new (or deleted before): fresh generations
            if new:
                self._conn.execute("UPDATE meta SET value = value + ? WHERE key = 'generation'", (len(new),))
                top = int(self._conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
                for g, user in enumerate(new, start=top - len(new) + 1):
                    now[user] = UserStamp(g, now[user].n_events)
            start = {user: now[user].n_events for user in counts}
            out = {
                user: UserStamp(now[user].generation, now[user].n_events + m) for user, m in counts.items()
            }
            self._conn.executemany(
                "INSERT INTO users (user_id, generation, n_events) VALUES (?, ?, ?) "
                "ON CONFLICT(user_id) DO UPDATE SET n_events = excluded.n_events",
                [(user, st.generation, st.n_events) for user, st in out.items()],
            )
            rows = []
            ids: list[tuple[str, str, int]] = []
            for e in applied:
                start[e.user_id] += 1
                rows.append((e.user_id, e.item_id, e.event_type, e.timestamp, start[e.user_id], e.weight))
                if e.event_id is not None:
                    ids.append((e.user_id, e.event_id, start[e.user_id]))
            self._conn.executemany(
                "INSERT INTO events (user_id, item_id, event_type, ts, pos, weight) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            if ids:
                self._keep_ids(ids, out)
            for i in skipped:  # users whose every event was skipped: their stamp as it stands
                if evs[i].user_id not in out:
                    out[evs[i].user_id] = self._stamp(evs[i].user_id)
        return Appended(out, tuple(sorted(skipped)))

    @staticmethod
    def _history(rows: list[tuple[str, int, str, float]]) -> History:
        if not rows:
            return History()
        items, ts, types, weights = zip(*rows, strict=True)
        return History(
            tuple(items), np.asarray(ts, dtype=np.int64), tuple(types), np.asarray(weights, dtype=np.float64)
        )

    def history(self, user: str, max_len: int | None = None) -> History:
        with self._lock:
            if max_len is None:
                rows = self._conn.execute(
                    "SELECT item_id, ts, event_type, weight FROM events WHERE user_id = ? ORDER BY pos",
                    (user,),
                ).fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT item_id, ts, event_type, weight FROM events WHERE user_id = ? "
                    "ORDER BY pos DESC LIMIT ?",
                    (user, max(0, int(max_len))),
                ).fetchall()[::-1]
        return self._history(rows)

    def stamp(self, user: str) -> UserStamp:
        with self._lock:
            return self._stamp(user)

    def since(self, user: str, n_events: int) -> tuple[UserStamp, History]:
        with self._lock, self._read():
            st = self._stamp(user)
            rows = self._conn.execute(
                "SELECT item_id, ts, event_type, weight FROM events WHERE user_id = ? AND pos > ? ORDER BY pos",
                (user, int(n_events)),
            ).fetchall()
        return st, self._history(rows)

    def get_state(self, user: str) -> CachedState | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT s.state, s.version, s.n_events, s.generation FROM states s JOIN users u "
                "ON u.user_id = s.user_id AND u.generation = s.generation WHERE s.user_id = ?",
                (user,),
            ).fetchone()
        if row is None:
            return None
        blob = bytes(row[0])
        try:
            state = decode_state(blob)
            if (state.version, state.n_events, state.generation) != (row[1], row[2], row[3]):
                raise DynrecError("its header disagrees with the states table")
        except DynrecError as exc:
            log.warning("dropping the unreadable cached state of user %r in %s: %s", user, self.path, exc)
            with self._lock, self._write():  # only this blob: a good state written since stays
                self._conn.execute("DELETE FROM states WHERE user_id = ? AND state = ?", (user, blob))
            return None
        return state

    def put_state(self, user: str, state: CachedState) -> bool:
        return self.put_states([(user, state)])[0]

    def put_states(self, states: Sequence[tuple[str, CachedState]]) -> list[bool]:
        blobs = [encode_state(state) for _, state in states]  # before taking the write lock
        if not states:
            return []
        with self._lock, self._write():
            return [self._put(user, state, blob) for (user, state), blob in zip(states, blobs, strict=True)]

    def _put(self, user: str, state: CachedState, blob: bytes) -> bool:
        """`put_state`'s compare-and-set inside a write transaction."""
        st = self._stamp(user)
        if st.generation == 0 or st.generation != state.generation or state.n_events > st.n_events:
            return False
        cur = self._conn.execute(
            "INSERT INTO states (user_id, version, n_events, generation, state) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(user_id) DO UPDATE SET version = excluded.version, "
            "n_events = excluded.n_events, generation = excluded.generation, state = excluded.state "
            "WHERE NOT (states.version = excluded.version AND states.generation = excluded.generation "
            "AND states.n_events > excluded.n_events)",
            (user, state.version, state.n_events, state.generation, blob),
        )
        return cur.rowcount > 0

    def delete_user(self, user: str, *, tombstone: bool = True) -> bool:
        with self._lock, self._write():
            n1 = self._conn.execute("DELETE FROM events WHERE user_id = ?", (user,)).rowcount
            n2 = self._conn.execute("DELETE FROM states WHERE user_id = ?", (user,)).rowcount
            n3 = self._conn.execute("DELETE FROM users WHERE user_id = ?", (user,)).rowcount
            self._conn.execute("DELETE FROM event_ids WHERE user_id = ?", (user,))
            if tombstone:
                self._conn.execute(
                    "INSERT INTO tombstones (user_id, deleted_at) VALUES (?, ?)", (user, time.time())
                )
        return (n1 + n2 + n3) > 0

    def event_seq(self) -> int:
        with self._lock:
            # AUTOINCREMENT keeps the largest number ever handed out in sqlite_sequence, also
            # after the rows holding it were deleted
            row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return 0 if row is None else int(row[0])

    def events_since(self, seq: int, upto: int | None = None) -> list[tuple[int, Event]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, user_id, item_id, ts, event_type, weight FROM events "
                "WHERE seq > ? AND (? IS NULL OR seq <= ?) ORDER BY seq",
                (int(seq), upto, upto),
            ).fetchall()
        return [(int(q), Event(str(u), str(i), int(t), str(et), float(w))) for q, u, i, t, et, w in rows]

    # -- VersionStore ----------------------------------------------------------------------------
    def add_version(self, record: VersionRecord) -> bool:
        with self._lock, self._write():
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO versions (id, created, record) VALUES (?, ?, ?)",
                (record.id, record.created, record.to_json()),
            )
            return cur.rowcount > 0

    def get_version(self, version_id: str) -> VersionRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT record FROM versions WHERE id = ?", (version_id,)).fetchone()
        return None if row is None else VersionRecord.from_json(row[0])

    def list_versions(self) -> list[VersionRecord]:
        with self._lock:
            rows = self._conn.execute("SELECT record FROM versions ORDER BY created, id").fetchall()
        return [VersionRecord.from_json(r[0]) for r in rows]

    def discard_version(self, version_id: str) -> bool:
        with self._lock, self._write():
            cur = self._conn.execute(
                "DELETE FROM versions WHERE id = ? AND id IS NOT "
                "(SELECT value FROM pointers WHERE key = 'current')",
                (version_id,),
            )
            return cur.rowcount > 0

    def current_version(self) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM pointers WHERE key = 'current'").fetchone()
        return None if row is None else str(row[0])

    def set_current(self, expected: str | None, version_id: str) -> bool:
        with self._lock, self._write():
            row = self._conn.execute("SELECT value FROM pointers WHERE key = 'current'").fetchone()
            held = None if row is None else str(row[0])
            known = self._conn.execute("SELECT 1 FROM versions WHERE id = ?", (version_id,)).fetchone()
            if held != expected or known is None:
                return False
            self._conn.execute(
                "INSERT INTO pointers (key, value) VALUES ('current', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (version_id,),
            )
            return True

    def acquire_lease(self, name: str, owner: str, ttl_s: float, note: str = "") -> Lease:
        now = time.time()
        with self._lock, self._write():
            row = self._conn.execute(
                "SELECT owner, expires, note FROM leases WHERE name = ?", (name,)
            ).fetchone()
            if row is None or float(row[1]) <= now or row[0] == owner:
                self._conn.execute(
                    "INSERT INTO leases (name, owner, expires, note) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, expires = excluded.expires, "
                    "note = excluded.note",
                    (name, owner, now + ttl_s, note),
                )
                return Lease(name, owner, now + ttl_s, note)
            return Lease(name, str(row[0]), float(row[1]), str(row[2]))

    def release_lease(self, name: str, owner: str) -> bool:
        with self._lock, self._write():
            cur = self._conn.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))
            return cur.rowcount > 0

    def tombstones(self, after_generation: int = 0) -> list[Tombstone]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT user_id, deleted_at, generation FROM tombstones WHERE generation > ? ORDER BY generation",
                (int(after_generation),),
            ).fetchall()
        return [Tombstone(str(u), float(t), int(g)) for u, t, g in rows]

    def deletion_generation(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT MAX(generation) FROM tombstones").fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def users(self, limit: int | None = None) -> list[str]:
        lim = _limit(limit)
        with self._lock:
            rows = self._conn.execute(
                "SELECT user_id FROM users ORDER BY 1 LIMIT ?", (-1 if lim is None else lim,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    def n_events(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def iter_events(self, chunk: int = 500) -> Iterator[Event]:
        """See `StateStore.iter_events`: `chunk` users per read transaction (the lock is not held
        between chunks, so other threads and processes keep writing while an export runs)."""
        last: str | None = None
        while True:
            with self._lock, self._read():
                users = [
                    str(r[0])
                    for r in self._conn.execute(
                        "SELECT user_id FROM users WHERE ? IS NULL OR user_id > ? ORDER BY 1 LIMIT ?",
                        (last, last, int(chunk)),
                    )
                ]
                rows = self._conn.execute(
                    "SELECT user_id, item_id, ts, event_type, weight FROM events WHERE user_id IN "
                    f"({', '.join('?' * len(users))}) ORDER BY user_id, pos",
                    users,
                ).fetchall()
            for u, item, ts, et, w in rows:
                yield Event(str(u), str(item), int(ts), str(et), float(w))
            if len(users) < chunk:
                return
            last = users[-1]
