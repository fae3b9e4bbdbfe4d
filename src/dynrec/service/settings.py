"""`ServiceSettings`: everything `create_app` needs, as one frozen value.

`dynrec serve` builds it from its options; with several uvicorn workers each worker process
rebuilds it from environment variables (`to_env` / `from_env`), since uvicorn's multi-process mode
imports an app factory by name and cannot pass Python objects.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

from dynrec.errors import DynrecError
from dynrec.models.config import RunOptions
from dynrec.models.retrieval import AnnConfig
from dynrec.service.edge import ANY_HOST, allowed_host_names

__all__ = ["API_KEY_ENV", "ENV_PREFIX", "ServiceSettings", "check_allowed_host", "check_api_key"]

ENV_PREFIX = "DYNREC_SERVICE_"
"""Prefix of the environment variables that carry the settings to worker processes (the API key
also honours the documented ``DYNREC_API_KEY``)."""

API_KEY_ENV = "DYNREC_API_KEY"
"""The documented environment variable of the API key."""


def check_api_key(key: str, name: str) -> str:
    """`key` when it can be an API key, else `DynrecError` naming `name` (the option or variable
    it came from): not empty or only whitespace (that is not "no key": leave it unset for that), no
    leading or trailing whitespace (HTTP strips it from a header value, so the key could never
    match), printable ASCII only (header values are not UTF-8)."""
    if not key.strip():
        raise DynrecError(f"{name} is empty: give a key, or leave {name} unset to serve without one")
    if key != key.strip():
        raise DynrecError(
            f"{name} starts or ends with whitespace, which HTTP strips from the X-API-Key header: "
            "the key could never match"
        )
    if not all(" " <= c <= "~" for c in key):
        raise DynrecError(f"{name} must be printable ASCII (it travels in an HTTP header)")
    return key


def check_allowed_host(host: str) -> str:
    """`host` when it can be an allowed ``Host`` name: ``*``, a host name or an IP address (IPv6
    with or without brackets), without a port; else `DynrecError`."""
    h = host.strip()
    if h == ANY_HOST:
        return host
    bare = h[1:-1] if h.startswith("[") and h.endswith("]") else h
    try:
        ipaddress.ip_address(bare)
        return host
    except ValueError:
        pass
    if ":" in h:
        raise DynrecError(f"allowed host {host!r}: give a host name or address without a port")
    if not _HOST_NAME.fullmatch(h):
        raise DynrecError(f"allowed host {host!r} is not a host name (letters, digits, '-', '.', '_')")
    return host


_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252}[A-Za-z0-9_])?\.?")


@dataclass(frozen=True)
class ServiceSettings:
    """How the service runs.

    `store_url`: ``sqlite:///path``, ``redis://host:port/db`` or ``memory://``; None =
    ``sqlite:///<model_dir>/events.db``. `api_key`: when set, the ``X-API-Key`` header must carry
    it on every write (POST /v1/events, DELETE, admin routes); None = no key, and then writes take
    only ``Content-Type: application/json`` bodies (`dynrec.service.edge`). An empty or
    whitespace-padded key is refused (`check_api_key`), never taken as "no key". `max_batch`: events per POST;
    `max_body_bytes`: request body size. `items_file`: item metadata (titles, genres) — else the
    model's dataset's metadata when the data registry has it. `batch_wait_ms` / `batch_size`: the
    micro-batcher waits at most this long (or until this many requests) before one scoring call;
    the default 0 takes the requests already queued without waiting — under load they queue while
    the previous batch is scored, so batches still form, and a lone request pays no wait (the serve
    benchmark: 2 ms of waiting cost a single client 60% of its throughput and added it to freshness).
    `model_dirs`: further saved models checked by DELETE for the user's data. `cache_size`: users
    whose decoded state stays in memory. `persist_every`: a user's cached state is checkpointed
    to the store every this many of their events (1 = on every event); the events themselves are
    always stored before the 2xx, so a checkpoint only saves replaying them (at most
    ``persist_every - 1`` per user after a restart, or in another worker). Write-through costs one
    state encoding and store write per user per request, most of an ingest request's time.

    `bind_host`: the address the service is bound to (``dynrec serve --host``); with
    `allowed_hosts` (``--allowed-host``, ``*`` = any) it decides which ``Host`` headers are
    answered (`dynrec.service.edge`: the bound address, plus ``localhost`` and the loopback
    addresses for a loopback bind, plus the allowed hosts; 421 for others). None and no allowed
    hosts: no Host check (an app built directly, as in tests).

    `ann`: ``hnsw`` or ``ivf`` = recommendations come from an approximate index
    over the model's item table (`dynrec.models.retrieval`; the model needs the `QueryEmbeddings`
    capability), built when a model is loaded and rebuilt with every new model (reload, update,
    items added); `ann_options`: the index's ``key=value`` options (`AnnConfig`). A stored user's
    recommendations come from their cached incremental state, through the index too (float32
    precision; the model's state must give a query vector, else exact). `precision`: ``int8``
    / ``bf16`` = session recommendations from a reduced-precision scoring copy of a neural model
    (`dynrec.models.neural.quantize`); cached states stay float32, since they are checkpointed in
    the shared store under the model's version for every worker.

    `seed`: before the model is first registered, a store that serves no model version and holds
    none of the model's users is filled with the model's training histories
    (`dynrec.jobs.recommend.seed_new_store`, what ``dynrec store seed`` does), so known users get
    personalised answers rather than the popular fallback; ``dynrec serve`` sets it unless
    ``--no-seed``. The outcome is `Runtime.seeding`."""

    model_dir: str
    store_url: str | None = None
    api_key: str | None = None
    max_batch: int = 1000
    max_body_bytes: int = 1_000_000
    items_file: str | None = None
    batch_wait_ms: float = 0.0
    batch_size: int = 64
    model_dirs: tuple[str, ...] = ()
    cache_size: int = 10_000
    persist_every: int = 16
    ann: str | None = None
    ann_options: tuple[str, ...] = ()
    precision: str = "float32"
    bind_host: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    seed: bool = False

    def __post_init__(self) -> None:
        if not str(self.model_dir).strip():
            raise DynrecError("model_dir must be a saved model directory")
        for name in ("max_batch", "max_body_bytes", "batch_size", "persist_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DynrecError(f"{name} must be an integer >= 1, got {v!r}")
        if not 0 <= float(self.batch_wait_ms) <= 1000:
            raise DynrecError(f"batch_wait_ms must be in [0, 1000], got {self.batch_wait_ms!r}")
        if self.api_key is not None:
            check_api_key(self.api_key, "api_key")
        for h in self.allowed_hosts:
            check_allowed_host(h)
        if self.bind_host is not None and not isinstance(self.bind_host, str):
            raise DynrecError(f"bind_host must be a host name or address, got {self.bind_host!r}")
        if self.ann is None and self.ann_options:
            raise DynrecError("ann_options need ann (hnsw or ivf)")
        self.ann_config()  # validates ann and ann_options
        RunOptions(precision=self.precision)  # type: ignore[arg-type]  # validated there

    def ann_config(self) -> AnnConfig | None:
        """The index configuration of `ann` and `ann_options` (None = exact retrieval)."""
        if self.ann is None:
            return None
        if self.ann not in ("hnsw", "ivf"):
            raise DynrecError(f"ann must be 'hnsw' or 'ivf', got {self.ann!r}")
        pairs: dict[str, str] = {}
        for raw in self.ann_options:
            k, eq, v = str(raw).partition("=")
            if not eq or not k.strip():
                raise DynrecError(f"ann_options expects key=value, got {raw!r}")
            pairs[k.strip()] = v.strip()
        return AnnConfig(kind=self.ann).with_overrides(pairs)  # type: ignore[arg-type]

    def host_names(self) -> frozenset[str] | None:
        """The ``Host`` names answered (`dynrec.service.edge.allowed_host_names`; None = any)."""
        return allowed_host_names(self.bind_host, self.allowed_hosts)

    @property
    def store(self) -> str:
        """The store URL in use (the default one when none was given)."""
        if self.store_url:
            url = self.store_url
            return url if "://" in url else f"sqlite:///{Path(url).resolve()}"  # a bare path: SQLite
        return f"sqlite:///{Path(self.model_dir).resolve() / 'events.db'}"

    def to_env(self) -> dict[str, str]:
        """Environment variables from which `from_env` rebuilds these settings."""
        out: dict[str, str] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            out[ENV_PREFIX + f.name.upper()] = json.dumps(list(v)) if isinstance(v, tuple) else str(v)
        return out

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServiceSettings:
        """Settings from `to_env`'s variables (default: ``os.environ``); the API key falls back to
        ``DYNREC_API_KEY``."""
        e = dict(os.environ) if env is None else env
        raw = {f.name: e.get(ENV_PREFIX + f.name.upper()) for f in fields(cls)}
        if raw["model_dir"] is None:
            raise DynrecError(f"{ENV_PREFIX}MODEL_DIR is not set")
        key_var = ENV_PREFIX + "API_KEY"
        if raw["api_key"] is None and API_KEY_ENV in e:
            key_var = API_KEY_ENV
            raw["api_key"] = e[API_KEY_ENV]
        if raw["api_key"] is not None:
            check_api_key(raw["api_key"], key_var)  # a set but empty variable is an error, not "no key"
        kw: dict[str, object] = {}
        try:
            for f in fields(cls):
                v = raw[f.name]
                if v is None:
                    continue
                if f.name in ("max_batch", "max_body_bytes", "batch_size", "cache_size", "persist_every"):
                    kw[f.name] = int(v)
                elif f.name == "batch_wait_ms":
                    kw[f.name] = float(v)
                elif f.name == "seed":
                    kw[f.name] = v == "True"
                elif f.name in ("model_dirs", "ann_options", "allowed_hosts"):
                    kw[f.name] = tuple(str(x) for x in json.loads(v))
                else:
                    kw[f.name] = v
        except (ValueError, TypeError) as exc:
            raise DynrecError(f"bad service setting in the environment: {exc}") from exc
        return cls(**kw)  # type: ignore[arg-type]
