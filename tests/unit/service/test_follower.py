"""`VersionFollower`: which loaded version a process installs while the store's pointer moves.

Known answers on a chain of version records in memory (no models: a holder here only carries its
version id). Publications that come faster than a load completes must move a process forward; a
superseded load must never replace a newer version, nor undo a rollback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from dynrec.online.store.memory import InMemoryStore
from dynrec.online.store.versions import InMemoryVersions, VersionRecord
from dynrec.service.follower import MAX_CATCH_UP, VersionFollower
from dynrec.service.holder import ModelHolder


@dataclass(frozen=True)
class _Held:
    """What the follower reads of a holder: its version id."""

    version: str


def _holder(version: str) -> ModelHolder:
    return cast(ModelHolder, _Held(version))


def _chain(n: int) -> InMemoryVersions:
    """v0 -> v1 -> ... -> v{n-1}, the pointer on the last one."""
    versions = InMemoryVersions()
    parent: str | None = None
    for k in range(n):
        versions.add_version(
            VersionRecord(f"v{k}", f"v{k}", parent, float(k), "initial" if k == 0 else "items")
        )
        assert versions.set_current(parent, f"v{k}")
        parent = f"v{k}"
    return versions


def _publish(versions: InMemoryVersions) -> str:
    """One more version on the pointer's lineage; its id."""
    cur = versions.current_version()
    new = f"v{len(versions.list_versions())}"
    versions.add_version(VersionRecord(new, new, cur, float(len(versions.list_versions())), "items"))
    assert versions.set_current(cur, new)
    return new


def _follower(
    versions: InMemoryVersions, held: str, load: Callable[[VersionRecord], ModelHolder] | None = None
) -> tuple[VersionFollower, list[tuple[str, str]]]:
    swaps: list[tuple[str, str]] = []
    follower = VersionFollower(
        InMemoryStore(),
        versions,
        _holder(held),
        load or (lambda rec: _holder(rec.id)),
        poll_s=0,
        on_swap=lambda old, new: swaps.append((old.version, new.version)),
    )
    return follower, swaps


def test_a_load_superseded_on_the_lineage_is_installed() -> None:
    versions = _chain(4)  # pointer v3
    follower, swaps = _follower(versions, "v0")
    assert follower.swap(_holder("v2"))
    assert follower.holder.version == "v2" and swaps == [("v0", "v2")]
    assert follower.swap(_holder("v3"))
    assert follower.holder.version == "v3"


def test_a_superseded_load_never_replaces_a_newer_version() -> None:
    versions = _chain(4)
    follower, swaps = _follower(versions, "v2")
    assert not follower.swap(_holder("v1"))  # older than the held one
    assert not follower.swap(_holder("v0"))
    assert follower.holder.version == "v2" and swaps == []
    assert follower.swap(_holder("v2"))  # the held one: nothing to do
    assert swaps == []


def test_a_superseded_load_does_not_undo_a_rollback() -> None:
    versions = _chain(5)  # pointer v4
    follower, _ = _follower(versions, "v4")
    assert versions.set_current("v4", "v1")  # a rollback to v1
    assert not follower.swap(_holder("v3"))  # the rolled-back branch is off the pointer's lineage
    assert follower.swap(_holder("v1"))
    assert follower.holder.version == "v1"
    new = _publish(versions)  # v5, child of v1
    assert versions.get_version(new) == VersionRecord("v5", "v5", "v1", 5.0, "items")
    assert not follower.swap(_holder("v2"))  # an ancestor of the rollback target, older than v1
    assert follower.swap(_holder("v5"))


def test_follow_once_catches_up_when_every_load_is_superseded() -> None:
    """Each of the first loads completes after another publication: the process still moves to
    the newest version in one poll (a follower that installs only the pointer's version stays on
    v0 while publications keep outrunning its loads)."""
    versions = _chain(2)  # pointer v1
    loads: list[str] = []

    def slow_load(rec: VersionRecord) -> ModelHolder:
        loads.append(rec.id)
        if len(loads) < MAX_CATCH_UP:
            _publish(versions)  # published while this load ran
        return _holder(rec.id)

    follower, swaps = _follower(versions, "v0", slow_load)
    follower.follow_once()
    assert loads == [f"v{k}" for k in range(1, MAX_CATCH_UP + 1)]
    assert swaps == [(f"v{k}", f"v{k + 1}") for k in range(MAX_CATCH_UP)]
    assert follower.holder.version == versions.current_version() == f"v{MAX_CATCH_UP}"


def test_follow_once_follows_a_rollback() -> None:
    versions = _chain(4)
    follower, swaps = _follower(versions, "v3")
    assert versions.set_current("v3", "v1")
    follower.follow_once()
    assert follower.holder.version == "v1" and swaps == [("v3", "v1")]
    follower.follow_once()  # nothing moved: nothing loaded
    assert swaps == [("v3", "v1")]
