"""A SQLite store written by the release before model versions (tests/fixtures/store-0.db: alice 2
events, bob 1, carol appended then deleted — written by that release's `SQLiteStore`) opens and
works: histories and stamps as written, new tables added, the event sequence continues after the
numbers the old file handed out, tombstones and versions work."""

from __future__ import annotations

import shutil
from pathlib import Path

from dynrec.data.events import Event
from dynrec.online.store import SQLiteStore
from dynrec.online.store.versions import VersionRecord

FIXTURE = Path(__file__).resolve().parents[3] / "fixtures" / "store-0.db"


def test_a_store_of_the_previous_release_opens_and_works(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(FIXTURE, path)
    store = SQLiteStore(path)
    try:
        assert store.users() == ["alice", "bob"]
        h = store.history("alice")
        assert (
            h.items == ("i1", "i2") and h.timestamps.tolist() == [10, 20] and h.weights.tolist() == [1.0, 2.0]
        )
        assert store.stamp("bob").n_events == 1
        assert store.event_seq() == 4  # carol's event took number 4 before she was deleted
        assert [e.item_id for _, e in store.events_since(0)] == ["i1", "i2", "i3"]
        assert store.deletion_generation() == 0 and store.current_version() is None
        store.append([Event("dave", "i9", 40)])
        assert [q for q, _ in store.events_since(4)] == [5]
        store.delete_user("bob")
        assert [t.user_id for t in store.tombstones()] == ["bob"]
        rec = VersionRecord("v1", ".", None, 1.0, "initial", event_seq=5, base_seq=5)
        assert store.add_version(rec) and store.set_current(None, "v1")
    finally:
        store.close()
    again = SQLiteStore(path)  # reopening the migrated file changes nothing
    try:
        assert again.current_version() == "v1" and again.users() == ["alice", "dave"]
    finally:
        again.close()
