"""On-disk cache of text embeddings: one SQLite file, rows keyed by (encoder identity, sha256 of text).

The identity names the model *and* its files (see `TextEncoder.name`), so a different model never
reads another's vectors. Vectors are stored as raw float32 bytes; the dimension of each encoder is
kept too, so a fully cached run needs no model at all. SQLite serialises concurrent writers
(several processes may share one cache); inserts are ``INSERT OR IGNORE``, so two processes
encoding the same text both succeed.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dynrec.errors import DynrecError

CACHE_FILE = "embeddings.sqlite"
_CHUNK = 500  # ids per "IN (...)" query (SQLite's default variable limit is far above this)


def default_cache_dir() -> Path:
    """``$DYNREC_CACHE_DIR/text``, else ``$XDG_CACHE_HOME/dynrec/text``, else ``~/.cache/dynrec/text``."""
    explicit = os.environ.get("DYNREC_CACHE_DIR")
    if explicit:
        return Path(explicit) / "text"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dynrec" / "text"


def text_key(text: str) -> str:
    """sha256 hex digest of the UTF-8 text (the cache key within one encoder)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _open(path: Path, wait_s: float = 60.0) -> sqlite3.Connection:
    """The cache file, in WAL mode, with its tables. Several serving processes open one cache at
    once, and SQLite can answer "database is locked" without its busy wait while another
    connection switches the journal mode or recovers the WAL, so the opening is retried until
    `wait_s` passes."""
    deadline = time.monotonic() + wait_s
    while True:
        db = sqlite3.connect(path, timeout=wait_s, check_same_thread=False)
        try:
            if str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.executescript(
                "CREATE TABLE IF NOT EXISTS emb (encoder TEXT NOT NULL, key TEXT NOT NULL, "
                "vec BLOB NOT NULL, PRIMARY KEY (encoder, key)) WITHOUT ROWID;"
                "CREATE TABLE IF NOT EXISTS encoder (name TEXT PRIMARY KEY, dim INTEGER NOT NULL);"
            )
            return db
        except sqlite3.OperationalError as exc:
            db.close()
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class EmbeddingCache:
    """Get/put float32 vectors by (encoder, text key) in ``<directory>/embeddings.sqlite``.

    Usable from any thread (one connection behind a lock): a server keeps one encoder, and its
    requests run on a thread pool."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / CACHE_FILE
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = _open(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise DynrecError(f"cannot open the text embedding cache {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def dim(self, encoder: str) -> int | None:
        """The vector size recorded for `encoder` (None when it has cached nothing yet)."""
        with self._lock:
            row = self._db.execute("SELECT dim FROM encoder WHERE name = ?", (encoder,)).fetchone()
        return None if row is None else int(row[0])

    def get(self, encoder: str, keys: Sequence[str], dim: int) -> dict[str, npt.NDArray[np.float32]]:
        """Cached vectors of those `keys` that are present (vectors of another size are ignored)."""
        out: dict[str, npt.NDArray[np.float32]] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = list(keys[start : start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._db.execute(
                    f"SELECT key, vec FROM emb WHERE encoder = ? AND key IN ({marks})", (encoder, *chunk)
                ).fetchall()
            for key, blob in rows:
                if len(blob) == 4 * dim:
                    out[str(key)] = np.frombuffer(blob, dtype=np.float32)
        return out

    def put(self, encoder: str, keys: Sequence[str], vectors: npt.NDArray[np.float32]) -> None:
        """Store one row of `vectors` per key (existing entries are kept)."""
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO encoder (name, dim) VALUES (?, ?)", (encoder, int(vecs.shape[1]))
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO emb (encoder, key, vec) VALUES (?, ?, ?)",
                [(encoder, k, vecs[i].tobytes()) for i, k in enumerate(keys)],
            )
