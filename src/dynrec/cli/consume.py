"""`dynrec consume`: a Redis Streams consumer-group worker applying events to the online state."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from dynrec.cli.common import _fail, handled


def _partition_ids(text: str | None, partitions: int) -> list[int]:
    if text is None:
        return list(range(partitions))
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        _fail(f"--partition-ids takes comma-separated integers, got {text!r}")
        raise  # unreachable: _fail exits


@handled
def consume(
    model_dir: Annotated[Path, typer.Argument(help="the model root (as dynrec serve takes it)")],
    store: Annotated[str, typer.Option("--store", help="state store URL (redis://..., sqlite:///PATH, ...)")],
    stream: Annotated[str, typer.Option("--stream", help="stream name (partitions: NAME:0 .. NAME:<N-1>)")],
    group: Annotated[str, typer.Option("--group", help="consumer group (created when missing)")],
    consumer: Annotated[
        str | None,
        typer.Option("--consumer", help="consumer name, unique among live consumers (default: HOST-pIDS)"),
    ] = None,
    source: Annotated[
        str | None, typer.Option("--source", help="Redis URL of the stream (default: the --store URL)")
    ] = None,
    batch: Annotated[int, typer.Option("--batch", help="entries per read and partition (<= 128)")] = 100,
    block_ms: Annotated[int, typer.Option("--block-ms", help="how long a read waits for entries")] = 1000,
    claim_idle_ms: Annotated[
        int,
        typer.Option(
            "--claim-idle-ms",
            help="a dead consumer's partitions and pending entries are taken over after this idle time",
        ),
    ] = 30_000,
    partitions: Annotated[int, typer.Option("--partitions", help="partitions the stream is split into")] = 1,
    partition_ids: Annotated[
        str | None,
        typer.Option("--partition-ids", help="the partitions this consumer reads, e.g. 0,2 (default: all)"),
    ] = None,
    persist_every: Annotated[
        int, typer.Option("--persist-every", help="checkpoint a user's state every this many events")
    ] = 16,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="serve Prometheus metrics at :PORT/metrics")
    ] = None,
    metrics_host: Annotated[str, typer.Option("--metrics-host", help="address of the metrics server")] = (
        "127.0.0.1"
    ),
    drain: Annotated[
        bool, typer.Option("--drain", help="stop once the partitions hold nothing unread or pending")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Apply the events of a Redis stream to the state store, exactly as POST /v1/events applies
    them, until SIGTERM/SIGINT (or, with --drain, until nothing is left to read).

    Entries carry the fields user_id, item_id, timestamp and optionally event_type, weight and
    event_id; an entry that is no valid event goes to NAME:dead with the reason. Each event id is
    applied once per user (a re-delivered entry is skipped). With --partitions N the stream is
    NAME:0 .. NAME:<N-1> (a producer writes a user's events to partition crc32(user_id) mod N) and
    each partition is read by one consumer at a time: start one consumer per set of
    --partition-ids. See dynrec.service.consumer for the whole contract."""
    from prometheus_client import start_http_server

    from dynrec.service.consumer import (
        Consumer,
        ConsumerSettings,
        default_consumer_name,
    )
    from dynrec.service.redis_streams import RedisStreamSource
    from dynrec.service.runtime import serving_threads

    if not model_dir.is_dir():
        _fail(f"model directory {model_dir} does not exist")
    url = source if source is not None else store
    if url.split("://", 1)[0].lower() not in ("redis", "rediss", "unix"):
        _fail(f"the stream source must be a redis://, rediss:// or unix:// URL: give --source (got {url!r})")
    serving_threads()  # one torch thread (as a serving process): scale with more consumers
    ids = _partition_ids(partition_ids, partitions)
    settings = ConsumerSettings(
        str(model_dir), store, batch=batch, block_ms=block_ms, persist_every=persist_every
    )
    name = consumer if consumer is not None else default_consumer_name(ids)
    src = RedisStreamSource(
        url, stream, group, name, partitions=partitions, partition_ids=ids, claim_idle_ms=claim_idle_ms
    )
    try:
        worker = Consumer(settings, src)
    except BaseException:
        src.close()
        raise
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = None
    if metrics_port is not None:
        worker.metrics.watch(src)
        server, _ = start_http_server(metrics_port, addr=metrics_host, registry=worker.metrics.registry)
    t0 = time.perf_counter()
    try:
        total = worker.run(stop, drain=drain)
    finally:
        if server is not None:
            server.shutdown()
        worker.close()
    wall = time.perf_counter() - t0
    summary = {
        "consumer": name,
        "streams": src.streams,
        "entries": total.entries,
        "applied": total.applied,
        "duplicates_skipped": total.duplicates,
        "dead_lettered": total.dead_lettered,
        "seconds": round(wall, 3),
        "model_versions": sorted(total.versions),
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"{name}: applied {total.applied} events ({total.duplicates} duplicates skipped, "
            f"{total.dead_lettered} entries dead-lettered) from {', '.join(src.streams)} in {wall:.1f} s"
        )
