"""`dynrec recommend`, `dynrec profile` and `dynrec similar`: answers of a saved model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dynrec.cli.common import (
    AnnOpt,
    AnnSetOpt,
    DataDirOpt,
    _ann_config,
    _fail,
    _parse_sets,
    _run_options,
    handled,
)


@handled
def recommend(
    model_dir: Annotated[Path, typer.Argument(help="saved model directory")],
    user: Annotated[
        str | None,
        typer.Option("--user", help="user id: their training history as the model records it (see above)"),
    ] = None,
    history: Annotated[
        str | None, typer.Option("--history", help="comma-separated item ids, oldest first")
    ] = None,
    k: Annotated[int, typer.Option("--k", help=">= 1; above the catalogue size: every item")] = 10,
    data_dir: DataDirOpt = None,
    explain: Annotated[
        bool,
        typer.Option("--explain", help="per item, the history items that drove it (models that explain)"),
    ] = False,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="run option key=value, e.g. precision=int8, num_threads=4"),
    ] = None,
    ann: AnnOpt = None,
    ann_sets: AnnSetOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Top-k items for a user or for an explicit history (seen items excluded); an empty
    --history gets the popular fallback (flagged, as the service does).

    --ann hnsw|ivf takes the top-k from an approximate index over the model's item table (built
    here; --ann-set ef_search=... etc.); --set precision=int8 scores with an int8 copy of a
    neural model.

    --user U uses U's *training* history as the model records it: the training part of its split
    plus the events of resumes — never validation or test targets — read from the data the model
    records (checked unchanged). `dynrec store seed` loads these same histories into an online
    store, so an OnlineRecommender over it recommends exactly what this command does."""
    from dynrec.jobs.recommend import recommend_for

    if (user is None) == (history is None):
        _fail("give exactly one of --user or --history")
    items = [h.strip() for h in history.split(",") if h.strip()] if history is not None else None
    overrides, options = _run_options(_parse_sets(sets), progress=False)
    if overrides:
        _fail(f"a saved model's options cannot be changed with --set: {sorted(overrides)}")
    recs = recommend_for(
        model_dir,
        user=user,
        history=items,
        k=k,
        data_dir=data_dir,
        explain=explain,
        options=options,
        ann=_ann_config(ann, ann_sets),
    )
    if as_json:
        typer.echo(json.dumps(recs.to_json()))
        return
    if recs.fallback == "popular":
        typer.echo("(empty history: the popular fallback, scored by training events per item)")
    why_rows = recs.explanations
    if recs.explained and why_rows is None:
        typer.echo(f"(no explanations: {recs.explanation_unavailable})")
    rows = [
        [str(rank), item, *([recs.title(item) or "-"] if recs.titles else []), f"{score:.4f}"]
        for rank, (item, score) in enumerate(zip(recs.items, recs.scores, strict=True), 1)
    ]
    lines = ranked_table(["rank", "item", *(["title"] if recs.titles else []), "score"], rows)
    typer.echo(lines[0])
    typer.echo(lines[1])
    for rank, line in enumerate(lines[2:], 1):
        typer.echo(line)
        if why_rows is not None:
            why = ", ".join(f"{recs.title(h) or h} ({w:.3g})" for h, w in why_rows[rank - 1])
            typer.echo(f"      because: {why or '-'}")


TITLE_WIDTH = 60
"""Titles longer than this are cut (with an ellipsis) in the human tables."""


def ranked_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """Header, rule and one line per row: the first and last columns (rank, score) right-aligned,
    the others left-aligned, a ``title`` column cut at `TITLE_WIDTH`."""
    if "title" in head:
        t = head.index("title")
        rows = [
            [*r[:t], r[t] if len(r[t]) <= TITLE_WIDTH else r[t][: TITLE_WIDTH - 1] + "…", *r[t + 1 :]]
            for r in rows
        ]
    widths = [max(len(c) for c in col) for col in zip(head, *rows, strict=True)]
    last = len(head) - 1

    def line(cells: list[str]) -> str:
        out = [
            c.rjust(w) if j in (0, last) else c.ljust(w)
            for j, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    return [line(head), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


@handled
def profile(
    model_dir: Annotated[Path, typer.Argument(help="saved model directory")],
    user: Annotated[
        str | None, typer.Option("--user", help="user id: their training history as the model records it")
    ] = None,
    history: Annotated[
        str | None, typer.Option("--history", help="comma-separated item ids, oldest first")
    ] = None,
    short_window: Annotated[
        int, typer.Option("--short-window", help="events of the short-term window (the most recent)")
    ] = 10,
    data_dir: DataDirOpt = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="with --user: their history in this state store (what `dynrec serve --store` shows "
            "on its page, events since the seeding included): sqlite:///PATH or a file path, redis://...",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Long- vs short-term interests of a user or a history: tag (genre/category) shares,
    representative titles, and the tags rising in the short term. Tags and titles come from the
    model directory's item_info.json (written at training for datasets with item metadata); without
    tags, clusters of the model's item vectors (as on the service's page). Percentages are rounded
    as the page rounds them, so both show the same numbers for the same history."""
    from dynrec.jobs.recommend import profile_for
    from dynrec.online.interests import percent
    from dynrec.online.store import open_store

    if (user is None) == (history is None):
        _fail("give exactly one of --user or --history")
    if store is not None and user is None:
        _fail("--store reads a user's history: give --user")
    items = [h.strip() for h in history.split(",") if h.strip()] if history is not None else None
    if store is not None:
        st = open_store(store if "://" in store else f"sqlite:///{store}")  # a bare path: SQLite
        try:
            prof = profile_for(model_dir, user=user, short_window=short_window, store=st)
        finally:
            st.close()
    else:
        prof = profile_for(model_dir, user=user, history=items, short_window=short_window, data_dir=data_dir)
    if as_json:
        typer.echo(json.dumps(prof.to_json()))
        return
    if not prof.has_item_info:
        typer.echo("(the model directory has no item_info.json: no tags or titles)")
    for w, label in ((prof.profile.long_term, "long term"), (prof.profile.short_term, "short term")):
        tags = ", ".join(f"{t} {percent(s)}%" for t, s in w.tags) or "-"
        typer.echo(f"{label} ({w.n_events} events): {tags}")
        typer.echo(f"  e.g. {'; '.join(w.items) or '-'}")
    shift = ", ".join(f"{t} +{percent(r)}%" for t, r in prof.profile.shift) or "-"
    typer.echo(f"rising: {shift}")


@handled
def similar(
    model_dir: Annotated[Path, typer.Argument(help="saved model directory")],
    item: Annotated[str, typer.Argument(help="an item id of the model's catalogue")],
    k: Annotated[int, typer.Option("--k", help=">= 1")] = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The k items most like ITEM: cosine of the model's item vectors when it has them, else the
    model's scores for a one-item history."""
    from dynrec.jobs.items import read_item_info
    from dynrec.models.base import Recommender
    from dynrec.models.retrieval import similar_items

    model = Recommender.load(model_dir)
    items, scores = similar_items(model, item, k)
    if as_json:
        typer.echo(json.dumps({"item_id": item, "items": items, "scores": scores}))
        return
    info = read_item_info(model_dir) if (model_dir / "item_info.json").is_file() else {}
    for i, s in zip(items, scores, strict=True):
        title = (info.get(i) or {}).get("title")
        typer.echo(f"{i}\t{s:.4f}" + (f"\t{title}" if title else ""))
