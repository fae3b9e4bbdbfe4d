"""`dynrec store`: seed an online state store with training histories, export its event log."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from dynrec.cli.common import DataDirOpt, handled

store_app = typer.Typer(
    no_args_is_help=True, help="Online state stores: seed with training histories, export the event log."
)


@store_app.command("seed")
@handled
def store_seed(
    model_dir: Annotated[Path, typer.Argument(help="saved model directory")],
    store: Annotated[
        str,
        typer.Option(
            "--store",
            help="state store URL: sqlite:///path/to/store.db (or a file path), redis://host:port/db, "
            "unix:///path.sock, memory://",
        ),
    ],
    replace: Annotated[
        bool, typer.Option("--replace", help="replace the histories of users the store already holds")
    ] = False,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Load every user's training history as the model records it (the training part of its split
    plus resumed events; never validation/test targets) into an online state store (any store
    `serve --store` takes), so an OnlineRecommender over the store starts where `dynrec recommend
    --user` is."""
    from dynrec.jobs.recommend import seed_store
    from dynrec.online.store import open_store, redact_url

    url = store if "://" in store else f"sqlite:///{store}"  # a bare path: SQLite
    st = open_store(url)
    try:
        seeded = seed_store(model_dir, st, data_dir=data_dir, replace=replace)
    finally:
        st.close()
    shown = str(Path(url.removeprefix("sqlite:///"))) if url.startswith("sqlite:///") else redact_url(url)
    report = dataclasses.replace(seeded, store=shown)
    if as_json:
        typer.echo(json.dumps(report.to_json()))
    else:
        typer.echo(f"seeded {report.store} with {report.events} events of {report.users} users")


@store_app.command("export")
@handled
def store_export(
    store: Annotated[
        str,
        typer.Option(
            "--store", help="store URL: sqlite:///path/to/store.db, redis://host:port/db, unix:///path.sock"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="CSV file to write (.csv or .csv.gz)")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Write every event the store holds to a CSV file (user_id,item_id,timestamp,event_type,value)
    that `dynrec train MODEL --dataset FILE` reads: posted events train the next model."""
    from dynrec.jobs.export import export_events
    from dynrec.online.store import open_store

    st = open_store(store)
    try:
        report = export_events(st, out)
    finally:
        st.close()
    if as_json:
        typer.echo(json.dumps(report.to_json()))
    else:
        typer.echo(f"exported {report.events} events of {report.users} users to {report.path}")
