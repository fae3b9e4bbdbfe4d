"""`validate_events`: the normalised batch is a `ValidEvents`, returned as it is when passed again,
so the doors an event batch passes (service, session, store) check each event once."""

from __future__ import annotations

import numpy as np
import pytest

from dynrec.data import events as events_module
from dynrec.data.events import Event, InvalidEventError, ValidEvents, validate_events
from dynrec.models.registry import create_model
from dynrec.online.session import OnlineRecommender
from dynrec.online.store import open_store
from tests.conftest import clustered_data


def test_the_batch_is_normalised_and_a_valid_batch_passes_through() -> None:
    out = validate_events([Event("u1", "i1", np.int64(5), "view", 2), Event("u2", "i2", 7, event_id=9)])
    assert isinstance(out, ValidEvents) and isinstance(out, tuple)
    assert [type(e.timestamp) for e in out] == [int, int] and out[0].weight == 2.0 and out[1].event_id == "9"
    assert validate_events(out) is out
    assert validate_events(Event("u", "i", 1)) == (Event("u", "i", 1),)
    with pytest.raises(InvalidEventError, match="event 1"):
        validate_events([Event("u", "i", 1), Event("u", " i", 2)])


def test_an_observed_batch_is_checked_once_through_session_and_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    data = clustered_data(n_users=6, n_items=12, n_groups=2, per_user=6, seed=1)
    model = create_model("itemknn")
    model.fit(data)
    online = OnlineRecommender(model, open_store(f"sqlite:///{tmp_path}/s.db"))
    seen: list[str] = []
    real = events_module._check_id

    def counting(index: int, field: str, value: object, kind: str) -> str:
        seen.append(field)
        return real(index, field, value, kind)

    monkeypatch.setattr(events_module, "_check_id", counting)
    items = model.item_vocab.ids[1:4] if model.item_vocab is not None else []
    online.observe([Event("u0", i, 10_000 + t, event_id=f"e{t}") for t, i in enumerate(items)])
    assert sorted(seen) == sorted(
        ["user_id", "item_id", "event_id"] * 3
    )  # one check per id, not one per door
    assert online.store.history("u0").items[-3:] == tuple(items)
