"""`dynrec train` (fit, or resume a saved model on new events) and `dynrec evaluate`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dynrec.cli.common import (
    AnnOpt,
    AnnSetOpt,
    ColumnsOpt,
    DataDirOpt,
    SplitOpt,
    _ann_config,
    _fail,
    _parse_sets,
    _run_options,
    _split,
    _table,
    handled,
)


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
    summary = jobs.validate(model, m, prepared, out)
    if as_json:
        typer.echo(json.dumps(summary.to_json()))
    else:
        if summary.n_invalid_rows or summary.n_duplicate_rows:
            typer.echo(f"{prepared.location}: {prepared.report.summary()}")
        typer.echo(f"saved {model} to {out} (fit {summary.fit_seconds:.1f}s); validation:")
        typer.echo(_table(summary.metrics))


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
        typer.echo(json.dumps(report.to_json()))
    else:
        typer.echo(
            f"updated {resume} with {report.n_events} events ({report.new_items} new items, "
            f"{report.new_users} new users, {report.method}, {report.seconds:.1f}s); saved to {report.out}"
        )


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

    ks = tuple(k or [10])
    overrides, options = _run_options(_parse_sets(sets), progress=not as_json)
    ann_cfg = _ann_config(ann, ann_sets)
    if Path(target).is_dir():
        if overrides:
            _fail(f"a saved model's options cannot be changed with --set: {sorted(overrides)}")
        ev = jobs.evaluate_saved(
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
        ev = jobs.evaluate_named(
            target,
            dataset,
            split=_split(split or "loo"),
            data_dir=data_dir,
            columns=columns,
            overrides=overrides,
            options=options,
            ks=ks,
            exclude_seen=not keep_seen,
            progress=not as_json,
            ann=ann_cfg,
        )
    if as_json:
        typer.echo(json.dumps(ev.to_json()))
    else:
        typer.echo(_table(ev.metrics))
        if ev.retrieval is not None:
            typer.echo(
                f"retrieval: {ev.retrieval} (approximate: a target outside the index's top-k is a miss)"
            )
        if ev.precision is not None:
            typer.echo(f"precision: {ev.precision}")
