"""Which model versions are still trained with a deleted user's data.

A version is immutable, so its users are read once per process (its user vocabulary) and kept.
A version is trained with a user when the user is in its vocabulary and it honours no tombstone of
the user (`VersionRecord.deletion_generation`): a version published after a deletion of the user
was refitted without their events. Events of a user re-created after a deletion are not told apart.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dynrec.errors import DynrecError
from dynrec.jobs.model_root import open_version
from dynrec.models.base import Recommender
from dynrec.online.store.versions import VersionRecord, VersionStore

log = logging.getLogger(__name__)

__all__ = ["TrainedWith"]


class TrainedWith:
    """Answers `versions_with(user)` for the versions of `root` recorded in `versions`, plus the
    operator's further saved models `model_dirs` (listed by the path configured)."""

    def __init__(self, versions: VersionStore, root: Path, model_dirs: tuple[str, ...] = ()) -> None:
        self.versions = versions
        self.root = root
        self.model_dirs = model_dirs
        self._user_vocabs: dict[str, frozenset[str]] = {}  # version id -> its users

    def versions_with(self, user: str) -> list[tuple[str, str]]:
        """(path under the root, id) of every recorded version trained with `user`'s data: the user
        is in its user vocabulary and it honours no tombstone of the user (a version published
        after a deletion of the user was refitted without their events; events of a user re-created
        after a deletion are not told apart). Then the operator's further saved models
        (`ServiceSettings.model_dirs`) holding the user, by the path configured."""
        tombs = [t.generation for t in self.versions.tombstones() if t.user_id == user]
        out: list[tuple[str, str]] = []
        for rec in self.versions.list_versions():
            if any(g <= rec.deletion_generation for g in tombs):
                continue
            if user in self._users_of(rec):
                out.append((rec.path, rec.id))
        for d in self.model_dirs:  # saved models outside the root the operator named
            users = self._users_of_dir(d)
            if users is not None and user in users[1]:
                out.append((d, users[0]))
        return out

    def _users_of_dir(self, model_dir: str) -> tuple[str, frozenset[str]] | None:
        """(content fingerprint, users) of the saved model at `model_dir`, None when unreadable."""
        try:
            model = Recommender.load(model_dir)
        except DynrecError as exc:
            log.warning("cannot check saved model %s for a deleted user: %s", model_dir, exc)
            return None
        assert model.user_vocab is not None
        return model.fingerprint(), frozenset(model.user_vocab.ids)

    def _users_of(self, rec: VersionRecord) -> frozenset[str]:
        users = self._user_vocabs.get(rec.id)
        if users is None:
            try:
                model = open_version(self.root, rec)
            except DynrecError as exc:
                log.warning("cannot check model version %s for a deleted user: %s", rec.id, exc)
                return frozenset()
            assert model.user_vocab is not None
            users = self._user_vocabs[rec.id] = frozenset(model.user_vocab.ids)
        return users
