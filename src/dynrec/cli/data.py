"""`dynrec data`: dataset statistics and synthetic data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from dynrec.cli.common import ColumnsOpt, DataDirOpt, handled

data_app = typer.Typer(no_args_is_help=True, help="Datasets: statistics, synthetic data.")


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


@data_app.command("synth")
@handled
def data_synth(
    out: Annotated[
        Path,
        typer.Option("--out", help="folder for events.csv, items.csv, oracle.csv, shifts.csv, synth.json"),
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
    stable: Annotated[
        float,
        typer.Option(
            "--stable-fraction", help="share of users whose interest never switches (no change points)"
        ),
    ] = 0.0,
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
        stable_fraction=stable,
        seed=seed,
        oracle=oracle,
    )
    summary = write_synthetic(out, cfg)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        hr = f" (oracle HR@10 {summary['oracle_HR@10']:.4f})" if "oracle_HR@10" in summary else ""
        typer.echo(f"wrote {summary['n_events']} events to {out}/events.csv{hr}")
        typer.echo(f"{summary['n_shifts']} planted interest shifts in {out}/shifts.csv")
