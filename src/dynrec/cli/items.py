"""`dynrec items`: add items to a saved model from their text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dynrec.cli.common import handled
from dynrec.errors import DynrecError

items_app = typer.Typer(
    no_args_is_help=True, help="Item catalogue: add items to a saved model from their text."
)


@items_app.command("add")
@handled
def items_add(
    model_dir: Annotated[Path, typer.Argument(help="saved model directory (a model that reads item text)")],
    items: Annotated[
        Path, typer.Option("--items", help="new items: CSV/TSV/JSONL with item_id and text columns")
    ],
    skip_existing: Annotated[
        bool,
        typer.Option("--skip-existing", help="skip ids already in the catalogue (default: refuse the file)"),
    ] = False,
    strict: Annotated[bool, typer.Option("--strict", help="fail on the first invalid row")] = False,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="the store of a served model root (default: MODEL_DIR/events.db when it exists): the items "
            "are published as a new model version that every server on the store follows",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Add items without events to a saved model from their text alone (encoded with the encoder
    the model recorded); they are recommendable at once. Ids already in the catalogue refuse the
    whole file unless --skip-existing. On a served model root the items become a new model version
    published through the store (servers follow it within a second); a model directory never
    served is rewritten in place, only when all is done, each file atomically."""
    from dynrec.jobs.catalogue import add_items
    from dynrec.jobs.items import ExistingItemsError

    try:
        report = add_items(
            model_dir,
            items,
            strict=strict,
            skip_existing=skip_existing,
            progress=not as_json,
            store_url=store,
        )
    except ExistingItemsError as exc:
        raise DynrecError(f"{exc} (pass --skip-existing to add only the new ones)") from None
    if as_json:
        typer.echo(json.dumps(report.to_json()))
        return
    for line in report.invalid:
        typer.echo(f"skipped invalid row: {line}")
    if report.invalid_rows > len(report.invalid):
        typer.echo(f"... {report.invalid_rows - len(report.invalid)} more invalid rows")
    if report.skipped:
        typer.echo(f"skipped {len(report.skipped)} ids already in the catalogue")
    typer.echo(
        f"added {len(report.added)} items to {model_dir} ({report.n_items} items now, encoder {report.encoder})"
    )
