"""`dynrec replay`: a model replayed over an event stream (predict, reveal, update)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dynrec.cli.common import AnnOpt, AnnSetOpt, DataDirOpt, _ann_config, _parse_sets, handled


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
    ann: AnnOpt = None,
    ann_sets: AnnSetOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Streaming (prequential) replay: predict each event from the current state, then reveal it.

    --ann hnsw|ivf: each prediction is the top k of an approximate index over the model's item
    table, searched with the user's state (seen items excluded as on the exact path); a revealed
    item outside that list is a miss. The output names the retrieval."""
    from dynrec.jobs.replay import run_replay
    from dynrec.online.updater import UpdateConfig

    run = run_replay(
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
        ann=_ann_config(ann, ann_sets),
    )
    if as_json:
        typer.echo(json.dumps(run.to_json()))
    else:
        for row in run.rows:
            vs = row.hr_vs_oracle
            extra = f"  ({vs:.1%} of oracle)" if vs is not None else ""
            typer.echo(
                f"{row.result.mode:<12} HR@{k} {row.hr:.4f}  NDCG@{k} {row.ndcg:.4f}  "
                f"{row.n_events} events, {row.events_per_s:.0f} events/s, {row.result.retrieval}{extra}"
            )
