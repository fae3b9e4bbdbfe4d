"""The store contract beyond histories and states, for every store (memory, SQLite, Redis; the
`make_store` fixture of tests/conftest.py): the store-wide event sequence (``event_seq``,
``events_since``), tombstones written by ``delete_user``, model versions with a compare-and-set
current-version pointer, and leases — with known answers, then raced by real processes (CAS
chains lose no publication, one lease holder at a time).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dynrec.data.events import Event, InvalidEventError
from dynrec.online.store import StateStore
from dynrec.online.store.versions import Lease, Tombstone, VersionRecord, VersionStore

MakeStore = Callable[[], StateStore]

CLOCK_SLACK = 1.0  # seconds: the Redis stores use the server's clock (the same host here)


def versions_of(store: StateStore) -> VersionStore:
    assert isinstance(store, VersionStore)
    return store


def record(vid: str, created: float, parent: str | None = None, **extra: Any) -> VersionRecord:
    return VersionRecord(vid, f"versions/{vid}", parent, created, "update" if parent else "initial", **extra)


# ---- the event sequence ----------------------------------------------------------------------------


def test_event_sequence_numbers_across_users_and_deletes(make_store: MakeStore) -> None:
    store, other = make_store(), make_store()  # two clients of one store, as two workers
    assert store.event_seq() == 0 and store.events_since(0) == []
    a1, b1, a2 = Event("a", "x", 5), Event("b", "y", 3, "click", 2.5), Event("a", "z", 1)
    store.append([a1, b1, a2])  # one batch: numbered in batch order, across users
    assert other.event_seq() == 3
    assert other.events_since(0) == [(1, a1), (2, b1), (3, a2)]
    c1 = Event("c", "w", 9, weight=0.5)
    other.append([c1])
    assert store.event_seq() == 4
    assert store.events_since(1, 3) == [(2, b1), (3, a2)]  # (seq, upto]
    assert store.events_since(3) == [(4, c1)] and store.events_since(4) == []
    assert store.events_since(0, 0) == [] and store.events_since(2, 2) == []
    assert store.events_since(-5, 1) == [(1, a1)]
    assert store.delete_user("a")
    assert store.event_seq() == 4  # a delete hands out no number and takes none back
    assert other.events_since(0) == [(2, b1), (4, c1)]  # the deleted user's events are gone
    assert not store.delete_user("nobody") and store.event_seq() == 4
    a3 = Event("a", "q", 11)
    store.append([a3, Event("b", "y2", 12)])
    assert store.event_seq() == 6  # never reused: 1 and 3 stay gone
    assert other.events_since(4) == [(5, a3), (6, Event("b", "y2", 12))]
    assert [s for s, _ in other.events_since(0)] == [2, 4, 5, 6]
    assert [s for s, _ in other.events_since(0, 5)] == [2, 4, 5]


def test_a_rejected_batch_takes_no_sequence_number(make_store: MakeStore) -> None:
    store = make_store()
    store.append([Event("u", "i", 1)])
    with pytest.raises(InvalidEventError):
        store.append([Event("u", "j", 2), Event("v", "k", 3, weight=-1.0)])
    store.append([Event("v", "k", 4)])
    assert store.event_seq() == 2 and [s for s, _ in store.events_since(0)] == [1, 2]


def test_large_batches_keep_their_order(make_store: MakeStore) -> None:
    """More events than one script pushes at a time (chunks of 1000), over three users."""
    store = make_store()
    evs = [Event(f"u{j % 3}", f"i{j}", j) for j in range(2500)]
    store.append(evs)
    store.append([Event("u0", "last", 1)])
    got = store.events_since(0)
    assert [s for s, _ in got] == list(range(1, 2502))
    assert [e for _, e in got] == [*evs, Event("u0", "last", 1)]
    assert store.events_since(2499) == [(2500, evs[-1]), (2501, Event("u0", "last", 1))]


# ---- tombstones ---------------------------------------------------------------------------------


def test_delete_records_tombstones_in_generation_order(make_store: MakeStore) -> None:
    store, other = make_store(), make_store()
    vs, vo = versions_of(store), versions_of(other)
    assert vs.deletion_generation() == 0 and vs.tombstones() == []
    store.append([Event("u", "i", 1), Event("v", "j", 2)])
    before = time.time()
    assert store.delete_user("u") is True
    assert other.delete_user("ghost") is False  # never held: still a tombstone (training data)
    assert store.delete_user("u") is False  # again: another tombstone
    after = time.time()
    got = vo.tombstones()
    assert [(t.user_id, t.generation) for t in got] == [("u", 1), ("ghost", 2), ("u", 3)]
    assert all(before - CLOCK_SLACK <= t.deleted_at <= after + CLOCK_SLACK for t in got)
    assert got[0].deleted_at <= got[1].deleted_at <= got[2].deleted_at
    assert vo.tombstones(1) == got[1:] and vo.tombstones(3) == [] and vs.deletion_generation() == 3
    assert all(isinstance(t, Tombstone) for t in got)
    assert store.history("v").items == ("j",)  # other users untouched
    store.append([Event("u", "k", 4)])  # a returning user is a new user, tombstones stay
    assert vo.deletion_generation() == 3 and store.history("u").items == ("k",)


def test_replacing_a_history_records_no_tombstone(make_store: MakeStore) -> None:
    """``delete_user(u, tombstone=False)`` (``store seed --replace``) removes the same things but
    forgets no person: no tombstone, no deletion generation."""
    store = make_store()
    store.append([Event("u", "i", 1), Event("v", "j", 2)])
    assert store.delete_user("u", tombstone=False)
    assert store.history("u").items == () and store.events_since(0) == [(2, Event("v", "j", 2))]
    vs = versions_of(store)
    assert vs.tombstones() == [] and vs.deletion_generation() == 0
    assert store.delete_user("v")
    assert [(t.user_id, t.generation) for t in vs.tombstones()] == [("v", 1)]


def test_concurrent_deletes_get_distinct_generations(make_store: MakeStore) -> None:
    """Four clients delete 40 users concurrently: 40 tombstones, generations 1..40, each user's
    events gone with its tombstone."""
    clients = [make_store() for _ in range(4)]
    users = [f"u{j}" for j in range(40)]
    clients[0].append([Event(u, "i", j) for j, u in enumerate(users)])

    def work(w: int) -> None:
        for u in users[w::4]:
            assert clients[w].delete_user(u)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stones = versions_of(clients[1]).tombstones()
    assert [t.generation for t in stones] == list(range(1, 41))
    assert sorted(t.user_id for t in stones) == sorted(users)
    assert clients[2].n_events() == 0 and clients[2].users() == [] and clients[2].events_since(0) == []


# ---- versions and the current-version pointer ----------------------------------------------------


def test_versions_add_list_discard(make_store: MakeStore) -> None:
    vs, vo = versions_of(make_store()), versions_of(make_store())
    assert vs.list_versions() == [] and vs.current_version() is None and vs.get_version("v1") is None
    v2 = record("v2", 2.0, "v1", events_hash="ab" * 32, n_events=7, event_seq=9, deletion_generation=1)
    v1 = record("v1", 1.0, base_seq=3, note="first")
    v0 = record("v0", 2.0, "v1")  # same time as v2: ordered by id
    for v in (v2, v1, v0):
        assert vs.add_version(v)
    assert not vo.add_version(record("v1", 5.0, note="another"))  # the id exists: nothing written
    assert vo.get_version("v1") == v1 and vo.get_version("v2") == v2
    assert vo.list_versions() == [v1, v0, v2]  # oldest first, then by id
    assert vs.set_current(None, "v1")
    assert not vo.discard_version("v1")  # current
    assert vo.discard_version("v0") and not vo.discard_version("v0")  # gone once
    assert not vo.discard_version("nope")
    assert vs.list_versions() == [v1, v2] and vs.get_version("v0") is None


def test_set_current_is_compare_and_set(make_store: MakeStore) -> None:
    vs, vo = versions_of(make_store()), versions_of(make_store())
    for v in (record("v1", 1.0), record("v2", 2.0, "v1"), record("v3", 3.0, "v2")):
        vs.add_version(v)
    assert not vs.set_current("v1", "v2")  # the pointer holds nothing yet
    assert not vs.set_current(None, "unknown")  # not a recorded version
    assert vs.current_version() is None
    assert vs.set_current(None, "v1") and vo.current_version() == "v1"
    assert not vo.set_current(None, "v2")  # expected none, holds v1
    assert not vo.set_current("v2", "v3")  # expected v2, holds v1
    assert not vo.set_current("v1", "unknown") and vo.current_version() == "v1"
    assert vo.set_current("v1", "v2") and vs.current_version() == "v2"
    assert vs.set_current("v2", "v2")  # setting what it holds is a success
    assert vs.set_current("v2", "v1") and vs.current_version() == "v1"  # a rollback is a CAS too
    assert vo.discard_version("v3")
    assert not vo.set_current("v1", "v3") and vo.current_version() == "v1"  # discarded


# ---- leases --------------------------------------------------------------------------------------


def test_lease_take_renew_refuse_release(make_store: MakeStore) -> None:
    vs, vo = versions_of(make_store()), versions_of(make_store())
    t0 = time.time()
    a = vs.acquire_lease("update", "A", 30.0, "update by A")
    assert isinstance(a, Lease) and a.held_by("A") and (a.name, a.note) == ("update", "update by A")
    assert t0 + 30 - CLOCK_SLACK <= a.expires <= time.time() + 30 + CLOCK_SLACK
    b = vo.acquire_lease("update", "B", 30.0, "update by B")  # refused: A holds it
    assert not b.held_by("B") and (b.owner, b.expires, b.note) == ("A", a.expires, "update by A")
    renewed = vs.acquire_lease("update", "A", 60.0, "still A")  # the holder renews
    assert renewed.held_by("A") and renewed.expires > a.expires and renewed.note == "still A"
    assert vo.acquire_lease("items", "B", 30.0).held_by("B")  # another name is another lease
    assert not vo.release_lease("update", "B")  # not B's
    assert vs.release_lease("update", "A") and not vs.release_lease("update", "A")
    c = vo.acquire_lease("update", "B", 30.0)
    assert c.held_by("B") and c.note == ""
    assert not vs.release_lease("items", "A") and vo.release_lease("items", "B")
    assert vo.release_lease("update", "B")
    assert not vs.release_lease("never-taken", "A")


def test_an_expired_lease_is_free(make_store: MakeStore) -> None:
    vs, vo = versions_of(make_store()), versions_of(make_store())
    assert vs.acquire_lease("update", "crashed", 0.3).held_by("crashed")
    assert not vo.acquire_lease("update", "B", 30.0).held_by("B")
    time.sleep(0.45)
    taken = vo.acquire_lease("update", "B", 30.0)  # the holder never came back: expired
    assert taken.held_by("B")
    assert not vs.acquire_lease("update", "crashed", 30.0).held_by("crashed")
    assert not vs.release_lease("update", "crashed")  # its release is refused: B holds it
    assert vo.release_lease("update", "B")


def test_an_expired_lease_can_still_be_released_by_its_holder(make_store: MakeStore) -> None:
    vs = versions_of(make_store())
    vs.acquire_lease("update", "A", 0.05)
    time.sleep(0.1)
    assert vs.release_lease("update", "A")  # nobody took it since: still A's record


# ---- several processes ----------------------------------------------------------------------------

N_PROCS = 3
N_PUBLISH = 20
N_LEASES = 6
TIMEOUT = 120.0


def _race(url: str, name: str, lease_log: str, start: Any, out: Any) -> None:
    """A process: publish `N_PUBLISH` versions, each on top of the current one (retrying the
    compare-and-set, discarding a candidate that lost), then take the lease `N_LEASES` times,
    writing "enter"/"exit" lines to `lease_log` while holding it."""
    from dynrec.online.store import open_store

    try:
        store = open_store(url)
        assert isinstance(store, VersionStore)
        start.wait(TIMEOUT)  # all processes open their stores, then start together
        published, lost = [], 0
        for k in range(N_PUBLISH):
            attempt = 0
            while True:
                cur = store.current_version()
                vid = f"{name}-{k}-{attempt}"
                assert store.add_version(record(vid, time.time(), cur))
                if store.set_current(cur, vid):
                    published.append(vid)
                    break
                assert store.discard_version(vid)
                lost += 1
                attempt += 1
        fd = os.open(lease_log, os.O_WRONLY | os.O_APPEND)
        for _ in range(N_LEASES):
            while not store.acquire_lease("update", name, 60.0).held_by(name):
                time.sleep(0.001)
            os.write(fd, f"enter {name}\n".encode())
            time.sleep(0.005)
            os.write(fd, f"exit {name}\n".encode())
            assert store.release_lease("update", name)
        os.close(fd)
        store.close()
        out.put(("ok", name, published, lost))
    except BaseException as exc:  # reported to the test, which fails with it
        out.put(("error", name, repr(exc), 0))


@pytest.mark.parametrize("kind", ["sqlite", "redis", "redis-cluster"])
def test_processes_racing_publications_and_a_lease(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        from dynrec.online.store import SQLiteStore

        SQLiteStore(tmp_path / "store.db").close()  # create the file before the processes race to
    else:
        url = request.getfixturevalue(kind.replace("-", "_") + "_url")
    from dynrec.online.store import open_store

    lease_log = tmp_path / "lease.log"
    lease_log.touch()
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(N_PROCS), ctx.Queue()
    procs = [
        ctx.Process(target=_race, args=(url, f"p{j}", str(lease_log), start, out), daemon=True)
        for j in range(N_PROCS)
    ]
    for p in procs:
        p.start()
    try:
        results = []
        for _ in procs:
            try:
                results.append(out.get(timeout=TIMEOUT))
            except queue.Empty:
                pytest.fail(f"a racing process did not finish within {TIMEOUT}s")
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    errors = [r for r in results if r[0] != "ok"]
    assert not errors, errors
    assert sum(r[3] for r in results) > 0, "no compare-and-set ever lost: the processes did not race"
    published = {vid for r in results for vid in r[2]}
    assert len(published) == N_PROCS * N_PUBLISH
    store = open_store(url)
    vs = versions_of(store)
    chain, cur = [], vs.current_version()  # the lineage from the current version back
    while cur is not None:
        chain.append(cur)
        got = vs.get_version(cur)
        assert got is not None
        cur = got.parent
    assert set(chain) == published and len(chain) == len(published)  # no publication lost
    assert {v.id for v in vs.list_versions()} == published  # every loser discarded itself
    for r in results:  # each process's own publications are in its order along the chain
        mine = [v for v in reversed(chain) if v.startswith(r[1] + "-")]
        assert mine == r[2]
    lines = lease_log.read_text().splitlines()
    assert len(lines) == 2 * N_PROCS * N_LEASES
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):  # never two holders at once
        assert enter.startswith("enter ") and leave == "exit " + enter.split()[1]
    store.close()
