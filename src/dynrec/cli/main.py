"""`dynrec` command line: parse the arguments, call a job in `dynrec.jobs`, print its result (text or --json).

This module holds the app, the global options and the entry point; each command group lives in its
own module (`data`, `train`, `recommend`, `items`, `store`, `models`, `replay`, `serve`, `shifts`), with the
shared helpers in `common`."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from dynrec.cli.common import _DEBUG, error_line
from dynrec.cli.consume import consume
from dynrec.cli.data import data_app
from dynrec.cli.items import items_app
from dynrec.cli.models import models_app
from dynrec.cli.recommend import profile, recommend, similar
from dynrec.cli.replay import replay
from dynrec.cli.serve import serve
from dynrec.cli.shifts import shifts
from dynrec.cli.store import store_app
from dynrec.cli.train import evaluate, train

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Dynamic-interest recommender.")
app.add_typer(data_app, name="data")
app.add_typer(store_app, name="store")
app.add_typer(models_app, name="models")
app.add_typer(items_app, name="items")
app.command()(train)
app.command()(evaluate)
app.command()(recommend)
app.command()(profile)
app.command()(similar)
app.command()(replay)
app.command()(serve)
app.command()(consume)
app.command()(shifts)


@app.callback()
def _global(
    debug: Annotated[
        bool, typer.Option("--debug", help="show the full traceback of an error instead of one line")
    ] = False,
) -> None:
    """Dynamic-interest recommender. Errors print one line and exit with code 1 (usage errors: 2);
    --debug shows the traceback."""
    _DEBUG.set(debug)


def main() -> None:
    """Console entry point: runs the app; anything that escapes a command (errors raised while
    parsing, in callbacks) still becomes one ``error:`` line and exit code 1, unless --debug."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        typer.secho("error: interrupted", fg=typer.colors.RED, err=True)
        sys.exit(130)
    except Exception as exc:
        if "--debug" in sys.argv[1:]:
            raise
        typer.secho(error_line(exc), fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
