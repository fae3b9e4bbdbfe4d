"""The hot routes' answers as JSON bytes, built directly and encoded once by orjson.

FastAPI would validate a route's return value against its response model and serialise it
again; for the answers the service builds itself from typed results that work buys nothing, and
on the routes every client calls (``GET /v1/users/{user_id}/recommendations``, ``POST
/v1/events``) it was a large share of a request's CPU. These functions give the same JSON as the
response models (`dynrec.service.schemas.RecommendationsOut`, `EventsOut`: same keys, same
order, aliases applied), which the routes still declare for the API docs.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response

from dynrec.online.shifts import Shift
from dynrec.service.holder import ModelHolder
from dynrec.service.runtime import Ingested, Recommended

__all__ = ["JSONBytes", "events_json", "recommendations_json", "shift_json"]


class JSONBytes(Response):
    """A JSON answer encoded by orjson (non-finite floats become ``null``, as strict JSON needs)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def shift_json(s: Shift) -> dict[str, Any]:
    """A shift in the form of `ShiftOut` (the ``from`` alias applied)."""
    return {
        "when": int(s.timestamp),
        "event_index": int(s.event_index),
        "score": float(s.score),
        "from": [str(x) for x in s.from_],
        "to": [str(x) for x in s.to],
    }


def recommendations_json(user_id: str | None, rec: Recommended) -> dict[str, Any]:
    """`rec` in the form of `RecommendationsOut`."""
    h: ModelHolder = rec.holder
    items = []
    for j, (item, score) in enumerate(zip(rec.items, rec.scores, strict=True)):
        expl = None
        if rec.explanations is not None:
            expl = [{"item_id": str(i), "weight": float(w)} for i, w in rec.explanations[j]]
        items.append({"item_id": item, "score": float(score), "title": h.title(item), "explanation": expl})
    return {
        "user_id": user_id,
        "items": items,
        "fallback": "popular" if rec.fallback else None,
        "model_version": rec.version,
        "retrieval": rec.retrieval,
    }


def events_json(done: Ingested) -> dict[str, Any]:
    """`done` in the form of `EventsOut` (each shift as `EventShiftOut`: the shift, then its user)."""
    return {
        "accepted": int(done.accepted),
        "unknown_items": int(done.unknown_items),
        "shifts": [{**shift_json(s), "user_id": u} for u, s in done.shifts],
    }
