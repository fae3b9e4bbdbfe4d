"""`dynrec models`: the model versions of a served model root (list, show, rollback)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from dynrec.cli.common import _fail, handled

models_app = typer.Typer(
    no_args_is_help=True,
    help="Model versions of a served model root, as its store records them (list, show, rollback).",
)

StoreForRoot = Annotated[
    str | None,
    typer.Option(
        "--store", help="the root's store URL (default: sqlite:///MODEL_ROOT/events.db, as `serve` uses)"
    ),
]


def _root_store(model_root: Path, store: str | None) -> Any:
    from dynrec.jobs.catalogue import served_store_url
    from dynrec.online.store import open_store

    url = served_store_url(model_root, store)
    if url is None:
        _fail(f"{model_root} has no store (never served): pass --store URL")
    return open_store(str(url))


def _version_row(rec: Any, current: str | None) -> dict[str, Any]:
    from dataclasses import asdict

    return {**asdict(rec), "current": rec.id == current}


@models_app.command("list")
@handled
def models_list(
    model_root: Annotated[Path, typer.Argument(help="a served model root")],
    store: StoreForRoot = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every recorded model version, oldest first; the current one marked with *."""
    st = _root_store(model_root, store)
    try:
        current = st.current_version()
        rows = [_version_row(r, current) for r in st.list_versions()]
    finally:
        st.close()
    if as_json:
        typer.echo(json.dumps({"versions": rows, "current": current}))
        return
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["created"]))
        mark = "*" if r["current"] else " "
        typer.echo(
            f"{mark} {r['id']:<20} {r['kind']:<8} {when}  parent {r['parent'] or '-':<20} "
            f"{r['n_events']:>7} events  {r['path']}"
        )


@models_app.command("show")
@handled
def models_show(
    model_root: Annotated[Path, typer.Argument(help="a served model root")],
    version: Annotated[str | None, typer.Argument(help="version id (default: the current one)")] = None,
    store: StoreForRoot = None,
) -> None:
    """One version's record as JSON (default: the current version)."""
    st = _root_store(model_root, store)
    try:
        current = st.current_version()
        ref = version or current
        rec = st.get_version(ref) if ref is not None else None
    finally:
        st.close()
    if rec is None:
        _fail(f"no model version {ref!r} in the store (see `dynrec models list`)")
    typer.echo(json.dumps(_version_row(rec, current), indent=2))


@models_app.command("rollback")
@handled
def models_rollback(
    model_root: Annotated[Path, typer.Argument(help="a served model root")],
    version: Annotated[str, typer.Argument(help="the version id to make current")],
    store: StoreForRoot = None,
) -> None:
    """Make an earlier version current again (compare-and-set); every server on the store follows
    within a second. Warns when the version is still trained with users deleted since."""
    from dynrec.jobs.model_root import open_version

    st = _root_store(model_root, store)
    try:
        rec = st.get_version(version)
        if rec is None:
            _fail(f"no model version {version!r} in the store (see `dynrec models list`)")
        model = open_version(model_root, rec)  # it must load before it is made current
        assert model.user_vocab is not None
        deleted = {t.user_id for t in st.tombstones(rec.deletion_generation)}
        held = sorted(u for u in deleted if u in model.user_vocab)
        current = st.current_version()
        if not st.set_current(current, rec.id):
            _fail("the current model version changed meanwhile; run the rollback again")
    finally:
        st.close()
    if held:
        typer.secho(
            f"warning: version {rec.id} was trained with {len(held)} user(s) deleted since; the next "
            "`POST /v1/admin/update` refits without them",
            fg=typer.colors.YELLOW,
            err=True,
        )
    typer.echo(f"current model version: {rec.id} (was {current})")
