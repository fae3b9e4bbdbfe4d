"""`dynrec` command line: a thin adapter over dynrec.pipeline (parse -> call the library -> print)."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from dynrec.errors import DynrecError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Dynamic-interest recommender.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: statistics, synthetic data.")
app.add_typer(data_app, name="data")

SplitOpt = Annotated[str, typer.Option("--split", help="loo (temporal leave-one-out) or time (global cut)")]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="folder with datasets (else DYNREC_DATA_DIR)")
]


F = TypeVar("F", bound=Callable[..., Any])


def handled(fn: F) -> F:
    """User mistakes (DynrecError, missing files) become a one-line error and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (DynrecError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            _fail(str(exc))

    return wrapper  # type: ignore[return-value]


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _parse_sets(sets: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for s in sets or []:
        if "=" not in s:
            _fail(f"--set expects key=value, got {s!r}")
        k, v = s.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _split(value: str) -> Any:
    if value not in ("loo", "time"):
        _fail(f"--split must be 'loo' or 'time', got {value!r}")
    return value


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
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Counts, density and sequence-length statistics of a dataset."""
    from dynrec.data import registry
    from dynrec.data.dataset import InteractionData, describe

    events = registry.load(dataset, data_dir, strict=strict)
    stats: dict[str, Any] = {"dataset": dataset, **describe(InteractionData.from_events(events))}
    stats["n_invalid_rows"] = events.report.n_invalid
    if as_json:
        typer.echo(json.dumps(stats))
    else:
        for k, v in stats.items():
            typer.echo(f"{k:<24} {v}")
        if events.report.n_invalid:
            typer.echo(events.report.summary())


@app.command()
@handled
def train(
    model: Annotated[str, typer.Argument(help="model name: pop, itemknn, userknn, als, ease, sasrec, ...")],
    dataset: Annotated[str, typer.Option("--dataset", help="registered name or event file path")],
    out: Annotated[Path, typer.Option("--out", help="directory to save the model")],
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="config override key=value (repeatable)")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config file")] = None,
    split: SplitOpt = "loo",
    data_dir: DataDirOpt = None,
    strict: Annotated[bool, typer.Option("--strict")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print validation metrics as JSON")] = False,
) -> None:
    """Train MODEL on the training part of DATASET's split (validation used for model selection)."""
    from dynrec import pipeline

    cfg: dict[str, Any] = {}
    if config is not None:
        file_model, cfg = pipeline.load_config_file(config)
        if file_model and file_model != model:
            _fail(f"{config} is a config for {file_model!r}, not {model!r}")
    prepared = pipeline.prepare(dataset, split=_split(split), data_dir=data_dir, strict=strict)
    m = pipeline.train(model, prepared, overrides=_parse_sets(sets), config=cfg, out=out)
    res = pipeline.evaluate_model(m, prepared, on="valid")
    summary = {"model": model, "out": str(out), "fit_seconds": m.meta["fit_seconds"], **res.metrics}
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"saved {model} to {out} (fit {m.meta['fit_seconds']:.1f}s); validation:")
        typer.echo(_table(res.metrics))


@app.command()
@handled
def evaluate(
    target: Annotated[str, typer.Argument(help="a saved model directory, or a model name (trained now)")],
    dataset: Annotated[str | None, typer.Option("--dataset")] = None,
    split: Annotated[str | None, typer.Option("--split", help="loo or time (default: the model's)")] = None,
    k: Annotated[list[int] | None, typer.Option("--k", help="cut-off(s), repeatable")] = None,
    keep_seen: Annotated[bool, typer.Option("--keep-seen", help="do not exclude already-seen items")] = False,
    sets: Annotated[list[str] | None, typer.Option("--set")] = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Full-ranking evaluation on the test targets (all items ranked; seen items excluded by default)."""
    from dynrec import pipeline

    ks = tuple(k or [10])
    if Path(target).is_dir():
        _, res = pipeline.evaluate_saved(
            target,
            dataset=dataset,
            split=_split(split) if split else None,
            data_dir=data_dir,
            ks=ks,
            exclude_seen=not keep_seen,
            progress=not as_json,
        )
    else:
        if dataset is None:
            _fail("--dataset is required when evaluating a model by name")
        assert dataset is not None
        prepared = pipeline.prepare(dataset, split=_split(split or "loo"), data_dir=data_dir)
        m = pipeline.train(target, prepared, overrides=_parse_sets(sets))
        res = pipeline.evaluate_model(m, prepared, ks=ks, exclude_seen=not keep_seen, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(res.metrics))
    else:
        typer.echo(_table(res.metrics))


@app.command()
@handled
def recommend(
    model_dir: Annotated[Path, typer.Argument(help="saved model directory")],
    user: Annotated[
        str | None, typer.Option("--user", help="user id (history from the model's dataset)")
    ] = None,
    history: Annotated[
        str | None, typer.Option("--history", help="comma-separated item ids, oldest first")
    ] = None,
    k: Annotated[int, typer.Option("--k")] = 10,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Top-k items for a user (their full history) or for an explicit history."""
    from dynrec.recommend import recommend_for

    if (user is None) == (history is None):
        _fail("give exactly one of --user or --history")
    items = [h.strip() for h in history.split(",") if h.strip()] if history is not None else None
    recs = recommend_for(model_dir, user=user, history=items, k=k, data_dir=data_dir)
    if as_json:
        typer.echo(json.dumps(recs))
    else:
        for rank, (item, score) in enumerate(zip(recs["items"], recs["scores"], strict=True), 1):
            typer.echo(f"{rank:>3}  {item:<12} {score:.4f}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except DynrecError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
