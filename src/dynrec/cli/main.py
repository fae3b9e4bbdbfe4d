"""`dynrec` command line: parse the arguments, call a job in `dynrec.jobs`, print its result (text or --json)."""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from dynrec.errors import DynrecError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Dynamic-interest recommender.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: statistics, synthetic data.")
app.add_typer(data_app, name="data")
store_app = typer.Typer(
    no_args_is_help=True, help="Online state stores: seed with training histories, export the event log."
)
app.add_typer(store_app, name="store")
models_app = typer.Typer(
    no_args_is_help=True,
    help="Model versions of a served model root, as its store records them (list, show, rollback).",
)
app.add_typer(models_app, name="models")
items_app = typer.Typer(
    no_args_is_help=True, help="Item catalogue: add items to a saved model from their text."
)
app.add_typer(items_app, name="items")

SplitOpt = Annotated[str, typer.Option("--split", help="loo (temporal leave-one-out) or time (global cut)")]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="folder with datasets (else DYNREC_DATA_DIR)")
]
ColumnsOpt = Annotated[
    str | None,
    typer.Option(
        "--columns",
        help="an event file's columns: user=COL,item=COL,time=COL,rating=COL,type=COL (any subset; "
        "time= empty: no timestamps). Recorded with a trained model.",
    ),
]


F = TypeVar("F", bound=Callable[..., Any])


_DEBUG: ContextVar[bool] = ContextVar("dynrec_cli_debug", default=False)
"""The global ``--debug`` option of the running invocation (set by the app callback, which runs
before every command)."""


def error_line(exc: BaseException) -> str:
    """The one line a user sees for an exception: dynrec's own errors and file-system errors
    (the user's to fix) as they are; anything else (a bug) with its type and a hint."""
    if isinstance(exc, DynrecError | OSError):
        return f"error: {exc}"
    msg = str(exc).strip().splitlines()
    first = msg[0] if msg else ""
    return f"error: {type(exc).__name__}: {first} (run with --debug for the traceback)"


def handled(fn: F) -> F:
    """No traceback reaches a user: every exception a command raises becomes one ``error: ...``
    line on stderr and exit code 1 (see `error_line`). ``dynrec --debug CMD`` re-raises instead.
    The CLI framework's own exceptions (exits, aborts, usage errors: exit code 2) pass through."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if _DEBUG.get() or type(exc).__module__.startswith(("typer", "click")):
                raise
            typer.secho(error_line(exc), fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _global(
    debug: Annotated[
        bool, typer.Option("--debug", help="show the full traceback of an error instead of one line")
    ] = False,
) -> None:
    """Dynamic-interest recommender. Errors print one line and exit with code 1 (usage errors: 2);
    --debug shows the traceback."""
    _DEBUG.set(debug)


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _parse_sets(sets: list[str] | None) -> dict[str, str]:
    """``--set key=value`` pairs (model options or run options: device, num_threads, progress,
    checkpoint_dir); values are parsed and checked against each option's type by the model layer."""
    out: dict[str, str] = {}
    for s in sets or []:
        k, eq, v = s.partition("=")
        if not eq or not k.strip():
            _fail(f"--set expects key=value, got {s!r}")
        out[k.strip()] = v.strip()
    return out


def _run_options(sets: dict[str, str], *, progress: bool) -> tuple[dict[str, str], Any]:
    """(model-option overrides, `RunOptions`) from ``--set`` pairs; progress bars unless --json."""
    from dynrec.models.base import RunOptions, split_overrides

    return split_overrides(sets, RunOptions(progress=progress))


def _split(value: str) -> Any:
    if value not in ("loo", "time"):
        _fail(f"--split must be 'loo' or 'time', got {value!r}")
    return value


AnnOpt = Annotated[
    str | None,
    typer.Option(
        "--ann",
        help="approximate retrieval through a FAISS index over the model's item table: hnsw or ivf "
        "(models that score by a dot product; default: exact)",
    ),
]
AnnSetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--ann-set",
        help="index option key=value, repeatable: m, ef_construction, ef_search (hnsw); nlist, nprobe "
        "(ivf); num_threads, seed",
    ),
]


def _ann_config(kind: str | None, sets: list[str] | None) -> Any:
    """The `AnnConfig` of ``--ann KIND --ann-set key=value ...`` (None without --ann)."""
    if kind is None:
        if sets:
            _fail("--ann-set needs --ann hnsw|ivf")
        return None
    from dynrec.models.retrieval import AnnConfig

    if kind not in ("hnsw", "ivf"):
        _fail(f"--ann must be 'hnsw' or 'ivf', got {kind!r}")
    return AnnConfig(kind=kind).with_overrides(_parse_sets(sets))  # type: ignore[arg-type]


def _scoring_extras(ann: Any, options: Any) -> dict[str, str]:
    """What a JSON result records about how it was scored, when not exact float32."""
    out: dict[str, str] = {}
    if ann is not None:
        out["retrieval"] = ann.kind
    if options.precision != "float32":
        out["precision"] = options.precision
    return out


def _table(metrics: dict[str, float]) -> str:
    keys = [k for k in metrics if "@" in k]
    w = max(len(k) for k in keys) if keys else 8
    lines = [f"{'metric':<{w}}  value", f"{'-' * w}  ------"]
    lines += [f"{k:<{w}}  {metrics[k]:.4f}" for k in keys]
    lines.append(f"{'n_users':<{w}}  {int(metrics.get('n_users', 0))}")
    return "\n".join(lines)


@data_app.command("stats")
@handled
def data_stats(
    dataset: Annotated[str, typer.Argument(help="registered name (ml-100k, ml-1m, ...) or a file path")],
    data_dir: DataDirOpt = None,
    strict: Annotated[bool, typer.Option("--strict", help="fail on the first invalid row")] = False,
    columns: ColumnsOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Counts, density and sequence-length statistics of a dataset, with the rows the reader
    rejected (invalid) or dropped (exact duplicates)."""
    from dynrec.data.dataset import InteractionData, describe
    from dynrec.jobs.prepare import load_events

    _, _, events = load_events(dataset, data_dir, strict=strict, columns=columns, allow_empty=True)
    stats: dict[str, Any] = {"dataset": dataset, **describe(InteractionData.from_events(events))}
    stats["n_invalid_rows"] = events.report.n_invalid
    stats["n_duplicate_rows"] = events.report.exact_duplicates
    if as_json:
        typer.echo(json.dumps(stats))
    else:
        for k, v in stats.items():
            typer.echo(f"{k:<24} {v}")
        if events.report.n_invalid or events.report.exact_duplicates:
            typer.echo(events.report.summary())


@app.command()
@handled
def train(
    model: Annotated[
        str | None, typer.Argument(help="model name: pop, itemknn, userknn, als, ease, sasrec, ...")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="registered name or event file path")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="directory to save the model")] = None,
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="config override key=value (repeatable)")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config file")] = None,
    split: SplitOpt = "loo",
    data_dir: DataDirOpt = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="fail on the first invalid row (of the events and of --items)")
    ] = False,
    columns: ColumnsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print validation metrics as JSON")] = False,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="warm-start this saved model on --events (transfer)")
    ] = None,
    events: Annotated[Path | None, typer.Option("--events", help="new events file for --resume")] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="with --resume: the store of a served model root (default: DIR/events.db when it exists); "
            "deleted users are left out and the result is published as a new model version",
        ),
    ] = None,
    update_epochs: Annotated[int, typer.Option("--update-epochs", help="epochs over the new events")] = 1,
    replay_ratio: Annotated[
        float, typer.Option("--replay-ratio", help="old users replayed per user with new events")
    ] = 1.0,
    items: Annotated[
        Path | None,
        typer.Option(
            "--items",
            help="item text file (CSV/TSV/JSONL: item_id + text columns) for models that read item text "
            "(default: the dataset's own item text); titles/tags also feed explanations",
        ),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            min=1,
            help="train a neural model data-parallel in N processes on this machine (torchrun; gloo on "
            "CPU, NCCL with one GPU each on CUDA); several machines: run torchrun yourself (see below)",
        ),
    ] = 1,
) -> None:
    """Train MODEL on the training part of DATASET's split (validation used for model selection).

    With --resume DIR --events NEW.csv: continue training the saved model from its current weights
    on the new events mixed with a replay sample of older ones (new users/items are added); saved to
    --out (default: DIR, in place, each file replaced atomically; on a served root a new model version
    published through the store). The replayed history is the training part of the model's
    recorded split plus earlier resumes, never its validation/test targets; users deleted through
    the root's store are left out (a refit when the model was trained with them). --strict and
    --columns apply to the --events file. Nothing is saved when the data has no valid event.

    --nproc N re-runs this command under ``torchrun --standalone --nproc_per_node N``: every batch
    is split across the processes (same effective batch), rank 0 validates, checkpoints and saves.
    Across machines start ``torchrun --nnodes M --node_rank R --nproc_per_node N --master_addr HOST
    --master_port PORT -m dynrec.cli.main train ...`` on each (without --nproc; checkpoint_dir on a
    shared file system)."""
    from dynrec import jobs
    from dynrec.jobs import distributed as ddp

    if nproc > 1 and (resume is not None or events is not None):
        _fail("--nproc trains from --dataset; --resume runs in one process")
    if resume is not None or events is not None:
        _train_resume(
            resume, events, out, data_dir, update_epochs, replay_ratio, as_json, strict, columns, store
        )
        return
    if model is None or dataset is None or out is None:
        _fail("give MODEL, --dataset and --out (or --resume DIR --events FILE)")
    assert model is not None and dataset is not None and out is not None
    cfg: dict[str, Any] = {}
    if config is not None:
        file_model, cfg = jobs.load_config_file(config)
        if file_model and file_model != model:
            _fail(f"{config} is a config for {file_model!r}, not {model!r}")
    if nproc > 1:
        ddp.check_distributable(model)
        raise typer.Exit(ddp.launch(nproc, ddp.strip_option(sys.argv[1:], "--nproc")))
    prepared = jobs.prepare(dataset, split=_split(split), data_dir=data_dir, strict=strict, columns=columns)
    overrides, options = _run_options(_parse_sets(sets), progress=not as_json)
    main_rank = ddp.is_main_process()  # under torchrun only rank 0 saves and reports
    m = jobs.train(
        model,
        prepared,
        overrides=overrides,
        config=cfg,
        options=options,
        out=out if main_rank else None,
        items=items,
        strict=strict,
    )
    ddp.finish()
    if not main_rank:
        return
    res = jobs.evaluate_model(m, prepared, on="valid")
    rep = prepared.report
    summary = {
        "model": model,
        "out": str(out),
        "fit_seconds": m.meta["fit_seconds"],
        "n_invalid_rows": rep.n_invalid,
        "n_duplicate_rows": rep.exact_duplicates,
        **res.metrics,
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        if rep.n_invalid or rep.exact_duplicates:
            typer.echo(f"{prepared.location}: {rep.summary()}")
        typer.echo(f"saved {model} to {out} (fit {m.meta['fit_seconds']:.1f}s); validation:")
        typer.echo(_table(res.metrics))


@app.command()
@handled
def evaluate(
    target: Annotated[str, typer.Argument(help="a saved model directory, or a model name (trained now)")],
    dataset: Annotated[str | None, typer.Option("--dataset")] = None,
    split: Annotated[str | None, typer.Option("--split", help="loo or time (default: the model's)")] = None,
    k: Annotated[
        list[int] | None,
        typer.Option(
            "--k", help="cut-off(s) >= 1, repeatable; above the catalogue size = the whole catalogue"
        ),
    ] = None,
    keep_seen: Annotated[bool, typer.Option("--keep-seen", help="do not exclude already-seen items")] = False,
    sets: Annotated[list[str] | None, typer.Option("--set")] = None,
    data_dir: DataDirOpt = None,
    columns: ColumnsOpt = None,
    ann: AnnOpt = None,
    ann_sets: AnnSetOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Full-ranking evaluation on the test targets (all items ranked; seen items excluded by default).

    A saved model is evaluated on the split it was trained on, rebuilt from the data it records;
    refused when that data changed since training (content hash) or when its training included
    test targets (e.g. a resume on them). --ann evaluates approximate retrieval instead: a target
    the index does not return is a miss, and the JSON says "retrieval": KIND. --set precision=int8
    scores with an int8 copy of a neural model."""
    from dynrec import jobs
    from dynrec.jobs.evaluate import scoring_model

    ks = tuple(k or [10])
    overrides, options = _run_options(_parse_sets(sets), progress=not as_json)
    ann_cfg = _ann_config(ann, ann_sets)
    if Path(target).is_dir():
        if overrides:
            _fail(f"a saved model's options cannot be changed with --set: {sorted(overrides)}")
        _, res = jobs.evaluate_saved(
            target,
            dataset=dataset,
            split=_split(split) if split else None,
            data_dir=data_dir,
            ks=ks,
            exclude_seen=not keep_seen,
            progress=not as_json,
            columns=columns,
            options=options,
            ann=ann_cfg,
        )
    else:
        if dataset is None:
            _fail("--dataset is required when evaluating a model by name")
        assert dataset is not None
        prepared = jobs.prepare(dataset, split=_split(split or "loo"), data_dir=data_dir, columns=columns)
        m = scoring_model(jobs.train(target, prepared, overrides=overrides, options=options))
        res = jobs.evaluate_model(
            m, prepared, ks=ks, exclude_seen=not keep_seen, progress=not as_json, ann=ann_cfg
        )
    extras = _scoring_extras(ann_cfg, options)
    if as_json:
        typer.echo(json.dumps({**res.metrics, **extras}))
    else:
        typer.echo(_table(res.metrics))
        if ann_cfg is not None:
            typer.echo(
                f"retrieval: {ann_cfg.kind} (approximate: a target outside the index's top-k is a miss)"
            )
        if options.precision != "float32":
            typer.echo(f"precision: {options.precision}")


@app.command()
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
        typer.echo(json.dumps(recs))
        return
    if recs.get("fallback") == "popular":
        typer.echo("(empty history: the popular fallback, scored by training events per item)")
    if explain and recs["because"] is None:
        typer.echo(f"(no explanations: {recs['explanation_unavailable']})")
    for rank, (item, score) in enumerate(zip(recs["items"], recs["scores"], strict=True), 1):
        title = recs["titles"][rank - 1] if explain else None
        typer.echo(f"{rank:>3}  {item:<12} {score:.4f}" + (f"  {title}" if title else ""))
        if explain and recs["because"] is not None:
            why = ", ".join(
                f"{b['title'] or b['item']} ({b['weight']:.3g})" for b in recs["because"][rank - 1]
            )
            typer.echo(f"       because: {why or '-'}")


@app.command()
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
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Long- vs short-term interests of a user or a history: tag (genre/category) shares,
    representative titles, and the tags rising in the short term. Tags and titles come from the
    model directory's item_info.json (written at training for datasets with item metadata)."""
    from dynrec.jobs.recommend import profile_for

    if (user is None) == (history is None):
        _fail("give exactly one of --user or --history")
    items = [h.strip() for h in history.split(",") if h.strip()] if history is not None else None
    prof = profile_for(model_dir, user=user, history=items, short_window=short_window, data_dir=data_dir)
    if as_json:
        typer.echo(json.dumps(prof))
        return
    if not prof["has_item_info"]:
        typer.echo("(the model directory has no item_info.json: no tags or titles)")
    for key, label in (("long_term", "long term"), ("short_term", "short term")):
        w = prof[key]
        tags = ", ".join(f"{t} {s:.0%}" for t, s in w["tags"]) or "-"
        typer.echo(f"{label} ({w['n_events']} events): {tags}")
        typer.echo(f"  e.g. {'; '.join(w['items']) or '-'}")
    shift = ", ".join(f"{t} +{r:.0%}" for t, r in prof["shift"]) or "-"
    typer.echo(f"rising: {shift}")


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


@app.command()
@handled
def similar(
    model_dir: Annotated[Path, typer.Argument(help="saved model directory")],
    item: Annotated[str, typer.Argument(help="an item id of the model's catalogue")],
    k: Annotated[int, typer.Option("--k", min=1)] = 10,
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
        typer.echo(json.dumps(report))
        return
    for line in report["invalid"]:
        typer.echo(f"skipped invalid row: {line}")
    if report["invalid_rows"] > len(report["invalid"]):
        typer.echo(f"... {report['invalid_rows'] - len(report['invalid'])} more invalid rows")
    if report["skipped"]:
        typer.echo(f"skipped {len(report['skipped'])} ids already in the catalogue")
    typer.echo(
        f"added {len(report['added'])} items to {model_dir} ({report['n_items']} items now, "
        f"encoder {report['encoder']})"
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
    from dynrec.online.store import open_store
    from dynrec.online.store.redis import redact_url

    url = store if "://" in store else f"sqlite:///{store}"  # a bare path: SQLite
    st = open_store(url)
    try:
        report = seed_store(model_dir, st, data_dir=data_dir, replace=replace)
    finally:
        st.close()
    report["store"] = (
        str(Path(url.removeprefix("sqlite:///"))) if url.startswith("sqlite:///") else redact_url(url)
    )
    if as_json:
        typer.echo(json.dumps(report))
    else:
        typer.echo(f"seeded {report['store']} with {report['events']} events of {report['users']} users")


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
        typer.echo(json.dumps(report))
    else:
        typer.echo(f"exported {report['events']} events of {report['users']} users to {report['path']}")


def _train_resume(
    resume: Path | None,
    events: Path | None,
    out: Path | None,
    data_dir: Path | None,
    update_epochs: int,
    replay_ratio: float,
    as_json: bool,
    strict: bool = False,
    columns: str | None = None,
    store: str | None = None,
) -> None:
    from dynrec.jobs.resume import resume_training
    from dynrec.online.updater import UpdateConfig

    if resume is None or events is None:
        _fail("--resume and --events go together")
    assert resume is not None and events is not None
    if not resume.is_dir():
        _fail(f"{resume} is not a saved model directory")
    cfg = UpdateConfig(epochs=update_epochs, replay_ratio=replay_ratio)
    _, report = resume_training(
        resume,
        events,
        out=out,
        data_dir=data_dir,
        config=cfg,
        strict=strict,
        columns=columns,
        store_url=store,
    )
    if as_json:
        typer.echo(json.dumps(report))
    else:
        typer.echo(
            f"updated {resume} with {report['n_events']} events ({report['new_items']} new items, "
            f"{report['new_users']} new users, {report['method']}, {report['seconds']:.1f}s); saved to {report['out']}"
        )


@data_app.command("synth")
@handled
def data_synth(
    out: Annotated[
        Path, typer.Option("--out", help="folder for events.csv, items.csv, oracle.csv, synth.json")
    ],
    users: Annotated[int, typer.Option("--users")] = 2000,
    items: Annotated[int, typer.Option("--items")] = 1000,
    groups: Annotated[int, typer.Option("--groups", help="item groups (interest categories)")] = 20,
    events_per_user: Annotated[int, typer.Option("--events-per-user", help="mean events per user")] = 60,
    switch_prob: Annotated[
        float, typer.Option("--switch-prob", help="per-event probability of an interest switch (drift)")
    ] = 0.05,
    noise: Annotated[float, typer.Option("--noise", help="share of uniformly random events")] = 0.05,
    zipf: Annotated[float, typer.Option("--zipf", help="within-group popularity exponent")] = 1.0,
    new_items: Annotated[float, typer.Option("--new-items", help="share of items released over time")] = 0.1,
    days: Annotated[float, typer.Option("--days", help="time span")] = 100.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    oracle: Annotated[
        bool,
        typer.Option(
            "--oracle/--no-oracle",
            help="exact simulation with the oracle's ranks (memory grows with users x items); "
            "--no-oracle samples instead (for logs of millions of events) and writes no oracle.csv",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Synthetic events with planted interest drift and a known ideal next-item distribution."""
    from dynrec.data.synthetic import SynthConfig, write_synthetic

    cfg = SynthConfig(
        n_users=users,
        n_items=items,
        n_groups=groups,
        events_per_user=events_per_user,
        switch_prob=switch_prob,
        noise=noise,
        zipf=zipf,
        new_item_fraction=new_items,
        duration_days=days,
        seed=seed,
        oracle=oracle,
    )
    summary = write_synthetic(out, cfg)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        hr = f" (oracle HR@10 {summary['oracle_HR@10']:.4f})" if "oracle_HR@10" in summary else ""
        typer.echo(f"wrote {summary['n_events']} events to {out}/events.csv{hr}")


@app.command()
@handled
def replay(
    target: Annotated[
        str, typer.Argument(help="a model name (trained now on the pre-cut events) or a saved model dir")
    ],
    dataset: Annotated[
        str, typer.Option("--dataset", help="registered name, event file, or a `dynrec data synth` folder")
    ],
    mode: Annotated[
        list[str] | None, typer.Option("--mode", help="static | state | incremental | retrain (repeatable)")
    ] = None,
    last_n: Annotated[
        int | None,
        typer.Option("--last-n", help="replay each user's last N events (default for order-only data: 10)"),
    ] = None,
    quantile: Annotated[
        float | None,
        typer.Option("--quantile", help="time cut at this quantile of event times (default 0.8)"),
    ] = None,
    update_every: Annotated[
        int, typer.Option("--update-every", help="update after N events (0: --n-updates segments)")
    ] = 0,
    update_every_time: Annotated[
        int, typer.Option("--update-every-time", help="update after this much event time (seconds)")
    ] = 0,
    n_updates: Annotated[int, typer.Option("--n-updates", help="segments when no --update-every*")] = 4,
    delay: Annotated[int, typer.Option("--delay", help="feedback delay (event-time units)")] = 0,
    update_epochs: Annotated[int, typer.Option("--update-epochs")] = 1,
    replay_ratio: Annotated[float, typer.Option("--replay-ratio")] = 1.0,
    k: Annotated[int, typer.Option("--k")] = 10,
    sets: Annotated[list[str] | None, typer.Option("--set", help="config override key=value")] = None,
    save_model: Annotated[
        Path | None, typer.Option("--save-model", help="save the model trained for this replay here")
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="PNG of NDCG@k over the stream")] = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Streaming (prequential) replay: predict each event from the current state, then reveal it."""
    from dynrec.jobs.replay import run_replay
    from dynrec.online.updater import UpdateConfig

    results = run_replay(
        target,
        dataset,
        modes=mode or ["state"],
        last_n=last_n,
        quantile=quantile,
        update_every=update_every,
        update_every_time=update_every_time,
        n_updates=n_updates,
        delay=delay,
        update=UpdateConfig(epochs=update_epochs, replay_ratio=replay_ratio),
        k=k,
        overrides=_parse_sets(sets),
        save_model=save_model,
        plot=plot,
        data_dir=data_dir,
    )
    if as_json:
        payload = results[0] if len(results) == 1 else {"results": results}
        typer.echo(json.dumps(payload))
    else:
        for row in results:
            extra = f"  ({row[f'HR@{k}_vs_oracle']:.1%} of oracle)" if f"HR@{k}_vs_oracle" in row else ""
            typer.echo(
                f"{row['mode']:<12} HR@{k} {row[f'HR@{k}']:.4f}  NDCG@{k} {row[f'NDCG@{k}']:.4f}  "
                f"{int(row['n_events'])} events, {row['events_per_s']:.0f} events/s{extra}"
            )


def _api_key(ctx: typer.Context, value: str | None) -> str | None:
    """The API key of ``serve``: None only when neither ``--api-key`` nor ``DYNREC_API_KEY`` is
    given; an empty or malformed one is an error naming where it came from (never "no key")."""
    import os

    from dynrec.service.settings import API_KEY_ENV, check_api_key

    if value is None:
        if API_KEY_ENV in os.environ:  # click skips an empty variable: it is not "unset"
            check_api_key(os.environ[API_KEY_ENV], API_KEY_ENV)
        return None
    source = ctx.get_parameter_source("api_key")  # typer's own copy of click's ParameterSource
    from_env = source is not None and source.name == "ENVIRONMENT"
    return check_api_key(value, API_KEY_ENV if from_env else "--api-key")


@app.command()
@handled
def serve(
    ctx: typer.Context,
    model_dir: Annotated[Path, typer.Argument(help="saved model directory")],
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="state store: sqlite:///PATH (default: sqlite:///MODEL_DIR/events.db), redis://host:port/db, "
            "memory://, or a file path (SQLite)",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="address to bind (non-loopback: set an API key)")
    ] = "127.0.0.1",
    allowed_hosts: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="a Host name clients reach the service by, besides the bound address (and localhost "
            "for a loopback bind); repeatable; * = any Host (no check). Others get 421",
        ),
    ] = None,
    port: Annotated[int, typer.Option("--port")] = 8000,
    workers: Annotated[
        int, typer.Option("--workers", help="worker processes (> 1 needs a shared store: sqlite or redis)")
    ] = 1,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="DYNREC_API_KEY",
            help="required as X-API-Key on writes, deletes and admin routes (without a key, writes must "
            "be Content-Type: application/json); an empty key is an error, not 'no key'",
        ),
    ] = None,
    items: Annotated[
        Path | None,
        typer.Option("--items", help="item metadata file (titles, genres); default: the model's dataset's"),
    ] = None,
    ann: AnnOpt = None,
    ann_sets: AnnSetOpt = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="run option key=value: precision=int8 (session recommendations)"),
    ] = None,
) -> None:
    """Serve MODEL_DIR over HTTP: events in (POST /v1/events), live recommendations out, the page at /,
    API docs at /docs, Prometheus metrics at /metrics.

    --ann hnsw|ivf: session (history) recommendations come from an approximate index over the
    model's item table, built at start and rebuilt on reload, update and item additions; a stored
    user's recommendations (their cached state) stay exact. --set precision=int8: session
    recommendations from an int8 scoring copy (cached states stay float32).

    Only requests whose Host header names the service are answered (DNS rebinding): the bound
    address, localhost and the loopback addresses for a loopback bind, and each --allowed-host
    (behind a proxy that forwards its own Host, name it; a 0.0.0.0 bind checks only those)."""
    from dynrec.service import ServiceSettings
    from dynrec.service.serve import serve as run_service

    key = _api_key(ctx, api_key)
    if not model_dir.is_dir():
        _fail(
            f"model directory {model_dir} does not exist"
            if not model_dir.exists()
            else f"{model_dir} is not a directory"
        )
    pairs = _parse_sets(sets)
    if set(pairs) - {"precision"}:
        _fail(f"serve --set takes precision=... only, got {sorted(set(pairs) - {'precision'})}")
    _, options = _run_options(pairs, progress=False)
    if ann is None and ann_sets:
        _fail("--ann-set needs --ann hnsw|ivf")
    settings = ServiceSettings(
        model_dir=str(model_dir),
        store_url=store,
        api_key=key,
        items_file=str(items) if items is not None else None,
        ann=ann,
        ann_options=tuple(ann_sets or ()),
        precision=options.precision,
        bind_host=host,
        allowed_hosts=tuple(allowed_hosts or ()),
    )
    run_service(settings, host=host, port=port, workers=workers)


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
