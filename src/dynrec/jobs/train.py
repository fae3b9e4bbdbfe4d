"""Offline jobs: dataset -> split -> train -> evaluate -> save, and evaluation of a saved model.

A saved model records its provenance (`dynrec.jobs.provenance`: dataset, absolute location,
content hash, split, hash of the split's test targets, resumed files), so `evaluate_saved`
rebuilds exactly the split it was trained on, refuses when the data changed since training or
when the model's training included test targets, and no model is ever evaluated on events it
trained on. `training_history` gives the events a model learned from (the split's training part
plus resumed events; never validation or test targets), the history `recommend --user` and
`seed_store` use.

Scoring a loaded model (recommend, evaluate, serve) goes through `scoring_model` (the run option
``precision``: an int8/bf16 scoring copy of a neural model) and, when asked, an approximate
index (`ann_index`: a FAISS index over a `QueryEmbeddings` model's item table). Evaluation stays
exact by default; with an index it ranks each target within the index's top-K
(`evaluate_retrieved`), so its metrics are those of the approximate retrieval. A reduced-precision
copy is never saved (`save_model`).
"""

from __future__ import annotations

import logging
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dynrec.data import registry
from dynrec.data.dataset import InteractionData
from dynrec.data.events import EventLog, ValidationReport
from dynrec.data.io import ColumnMap, parse_columns, read_events
from dynrec.data.query import check_k
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DatasetNotFoundError, DynrecError
from dynrec.evaluation.offline import EvalResult, evaluate, rank_report, user_popularity
from dynrec.jobs import items as items_
from dynrec.jobs import provenance as prov_
from dynrec.jobs.provenance import Provenance
from dynrec.models.base import Recommender, RunOptions
from dynrec.models.capabilities import QueryEmbeddings
from dynrec.models.neural.quantize import apply_precision, is_quantized
from dynrec.models.registry import create_model
from dynrec.models.retrieval import AnnConfig, AnnIndex, retrieve
from dynrec.preprocessing.split import EvalSet, Split, SplitKind, make_split
from dynrec.text import Encoder

log = logging.getLogger(__name__)

SEEN_TARGET_WARN_SHARE = 0.1
"""Warn when more than this share of test targets is already in the query's own history: with
seen items excluded they can never be hit (typically duplicated rows or repeat consumption)."""


@dataclass(frozen=True)
class Prepared:
    """A dataset read, indexed and split, with what provenance needs (location, content hash)."""

    name: str  # registered name, or the absolute path of the event file
    data: InteractionData
    split: Split
    location: str = ""  # absolute path of the file read
    events_hash: str = ""
    columns: str | None = None  # the --columns spec used to read the file
    report: ValidationReport = field(default_factory=ValidationReport)

    def provenance(self) -> Provenance:
        """The record a model trained on this split saves (``meta["provenance"]``)."""
        return Provenance(
            dataset=self.name,
            location=self.location,
            events_hash=self.events_hash,
            n_events=self.data.n_events,
            split=self.split.kind,
            split_cut=self.split.cut,
            test_hash=prov_.targets_hash(self.data, self.split.test),
            n_test=len(self.split.test),
            columns=self.columns,
        )


def column_map(columns: str | ColumnMap | None) -> ColumnMap | None:
    """A `ColumnMap` from a ``--columns`` spec (``user=COL,item=COL,time=COL,rating=COL,type=COL``)."""
    if columns is None or isinstance(columns, ColumnMap):
        return columns
    return parse_columns(columns)


def _locate(dataset: str, data_dir: str | Path | None) -> tuple[str, str]:
    """(name to record, absolute location): a registered name stays a name (its file resolved
    through --data-dir / DYNREC_DATA_DIR / the cache); a file path becomes absolute, so the model
    works from any directory."""
    if dataset in registry.DATASETS:
        _, path = registry.resolve(dataset, data_dir)
        return dataset, str(Path(path).resolve())
    p = Path(dataset).expanduser()
    if not p.exists():
        # the registry gives the right message (unknown name vs missing file)
        registry.load(dataset, data_dir)
    absolute = str(p.resolve())
    return absolute, absolute


def load_events(
    dataset: str,
    data_dir: str | Path | None = None,
    *,
    strict: bool = False,
    columns: str | None = None,
    allow_empty: bool = False,
) -> tuple[str, str, EventLog]:
    """(name to record, absolute location, events) of a registered dataset or an event file
    (`columns`: a ``--columns`` spec for a file). Refuses data with no valid event unless
    `allow_empty`."""
    name, location = _locate(dataset, data_dir)
    cm = column_map(columns)
    if name in registry.DATASETS:
        if cm is not None:
            raise DynrecError(
                f"--columns maps the columns of an event file; {name!r} is a registered dataset with a known format"
            )
        events = registry.load(name, data_dir, strict=strict)
    else:
        events = read_events(Path(location), strict=strict, columns=cm)
    if len(events) == 0 and not allow_empty:
        rep = events.report
        why = f"; first: {rep.invalid[0]}" if rep.invalid else ""
        raise DynrecError(
            f"{location}: no valid events ({rep.n_invalid} invalid rows{why}): nothing to train or evaluate on"
        )
    return name, location, events


def prepare(
    dataset: str,
    *,
    split: SplitKind = "loo",
    data_dir: str | Path | None = None,
    strict: bool = False,
    quantile: float = 0.8,
    cut: int | None = None,
    columns: str | None = None,
) -> Prepared:
    """Read `dataset` (a registered name or an event file; `columns` maps a file's columns),
    index it and split it (`cut` fixes a temporal split's cut-off, else `quantile` decides it).
    Refuses data with no valid events, no training events or no test targets."""
    name, location, events = load_events(str(dataset), data_dir, strict=strict, columns=columns)
    data = InteractionData.from_events(events)
    kwargs: dict[str, Any] = {}
    if split == "time":
        kwargs = {"cut": cut} if cut is not None else {"quantile": quantile}
    try:
        sp = make_split(data, split, **kwargs)
    except ValueError as exc:
        raise DynrecError(f"{name}: {exc}") from exc
    if sp.train.n_events == 0 or len(sp.test) == 0:
        raise DynrecError(
            f"{name}: the {split!r} split leaves {sp.train.n_events} training events and {len(sp.test)} "
            f"test targets ({data.n_events} events, {len(data.user_vocab)} users): too little data to "
            "train and evaluate (leave-one-out needs users with 2+ events)"
        )
    return Prepared(name, data, sp, location, prov_.events_hash(events), columns, events.report)


def load_config_file(path: str | Path) -> tuple[str | None, dict[str, Any]]:
    """A TOML file: optional ``model = "sasrec"`` and a ``[config]`` table (or top-level keys).
    Keys may be model options or run options (device, num_threads, progress, checkpoint_dir)."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise DynrecError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DynrecError(f"{path}: not a TOML config file (not UTF-8 text: {exc.reason})") from None
    except OSError as exc:
        raise DynrecError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    model = doc.pop("model", None)
    if model is not None and not isinstance(model, str):
        raise DynrecError(f"{path}: 'model' must be a model name string, got {model!r}")
    cfg = doc.get("config", doc)
    if not isinstance(cfg, dict):
        raise DynrecError(f"{path}: 'config' must be a table of options")
    nested = sorted(k for k, v in cfg.items() if isinstance(v, dict))
    if nested:
        raise DynrecError(
            f"{path}: unexpected table(s) {nested}; put options at the top level or under [config]"
        )
    return model, dict(cfg)


def train(
    model_name: str,
    prepared: Prepared,
    *,
    overrides: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
    options: RunOptions | None = None,
    out: str | Path | None = None,
    items: str | Path | None = None,
    encoder: Encoder | None = None,
    strict: bool = False,
) -> Recommender:
    """Fit `model_name` on the split's training part (validation for model selection only), record
    where it came from (``meta``: dataset, split, provenance) and save it to `out`. Run-option keys
    in `config`/`overrides` (e.g. ``device``) apply over `options` and are never saved.

    A model that reads item text gets its table before `fit` (`dynrec.jobs.items.attach_item_text`:
    from the item file `items` when given, else the dataset's own item text; encoded with `encoder`
    when given, else the model's configured text encoder), recorded in ``meta["item_text"]``. With
    `out`, the titles and tags of the model's items (the dataset's metadata and `items`) are saved
    as ``item_info.json`` when there are any. `strict`: the first invalid row of `items` is an
    error (else invalid rows are reported and skipped)."""
    model = create_model(model_name, overrides, config, options)
    # the dataset's own text feeds the model's table and item_info.json: read it only for those
    with_dataset = out is not None or items_.reads_item_text(model)
    texts = items_.training_texts(
        prepared.name, prepared.location, items, with_dataset=with_dataset, strict=strict
    )
    vocab = prepared.split.train.item_vocab
    text_meta = items_.attach_item_text(model, vocab, texts, encoder=encoder, progress=model.options.progress)
    t0 = time.perf_counter()
    model.fit(prepared.split.train, prepared.split.valid)
    model.meta.update(
        {
            "dataset": prepared.name,
            "split": prepared.split.kind,
            "split_cut": prepared.split.cut,
            "fit_seconds": time.perf_counter() - t0,
            prov_.PROVENANCE_KEY: prepared.provenance().to_dict(),
        }
    )
    if text_meta is not None:
        model.meta["item_text"] = text_meta
    if out is not None:
        save_model(model, out)
        info = texts.info(vocab)
        if info:
            items_.write_item_info(out, info)
    return model


def save_model(model: Recommender, out: str | Path) -> Path:
    """Save `model` to `out`, refusing a reduced-precision scoring copy (`quantize` /
    ``--set precision=...``): its layers are packed for scoring only; save the float32 model."""
    if is_quantized(model):
        raise DynrecError(
            f"{out}: refusing to save {model.name!r}: it is a {model.meta.get('inference_precision')} "
            "scoring copy (precision=...), for scoring only; save the float32 model instead"
        )
    return model.save(out)


def scoring_model(model: Recommender) -> Recommender:
    """`model` at its run option ``precision`` (float32: `model` itself; int8/bf16: a scoring copy
    of a neural model, `dynrec.models.neural.quantize.apply_precision`), for recommend, evaluate
    and serve. Refused (`DynrecError`) for a model the precision does not apply to."""
    return apply_precision(model)


def ann_index(model: Recommender, ann: AnnConfig | AnnIndex | None) -> AnnIndex | None:
    """The approximate index to score `model` with: None (exact), the given `AnnIndex`, or one
    built now from `model`'s item table with the given `AnnConfig`. Refuses a model whose scores
    are not a dot product (no `QueryEmbeddings` capability), since no index can stand for them."""
    if ann is None or isinstance(ann, AnnIndex):
        return ann
    if not isinstance(model, QueryEmbeddings):
        raise DynrecError(
            f"--ann {ann.kind}: model {model.name!r} does not score by a dot product (no QueryEmbeddings "
            "capability), so an approximate index cannot stand in for its scores; use exact retrieval "
            "(drop --ann)"
        )
    return AnnIndex.for_model(model, ann)


def check_ks(ks: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Cut-offs must be integers >= 1 (a cut-off above the catalogue size is allowed: see
    `evaluate_model`)."""
    if not ks:
        raise DynrecError("give at least one cut-off --k")
    return tuple(check_k(k) for k in ks)


def _extends(model_vocab: Vocabulary, data_vocab: Vocabulary) -> bool:
    """The model's vocabulary is the data's, possibly grown afterwards (resumes append ids)."""
    n = len(data_vocab)
    return len(model_vocab) >= n and tuple(model_vocab.ids[:n]) == tuple(data_vocab.ids)


def _check_vocab(model: Recommender, data: InteractionData, what: str) -> None:
    for kind, mv, dv in (
        ("item", model.item_vocab, data.item_vocab),
        ("user", model.user_vocab, data.user_vocab),
    ):
        if mv is not None and not _extends(mv, dv):
            raise DynrecError(
                f"the model's {kind} vocabulary differs from this dataset's: {what} it on the dataset it "
                "was trained on"
            )


def seen_target_share(es: Any, n_items: int) -> float:
    """Share of queries whose target item is already in the query's own history."""
    if len(es) == 0:
        return 0.0
    q = es.queries
    hist = q.row_ids().astype(np.int64) * n_items + q.items.astype(np.int64)
    tgt = np.arange(len(es), dtype=np.int64) * n_items + np.asarray(es.targets, dtype=np.int64)
    return float(np.isin(tgt, hist).mean())


def evaluate_model(
    model: Recommender,
    prepared: Prepared,
    *,
    ks: tuple[int, ...] = (10,),
    exclude_seen: bool = True,
    on: str = "test",
    progress: bool = False,
    ann: AnnConfig | AnnIndex | None = None,
) -> EvalResult:
    """Full-ranking evaluation of `model` on the split's test (or validation) targets; with `ann`
    (an `AnnConfig` to build an index with, or an `AnnIndex`), the approximate evaluation of
    `evaluate_retrieved` instead (a target the index does not return is a miss).

    Cut-offs must be >= 1. A cut-off above the catalogue size is kept as asked (``HR@5000``):
    rank metrics stay well defined (every ranked target is within it; Precision@k still divides
    by k), and Coverage/Novelty use the whole ranked catalogue. Warns when more than
    `SEEN_TARGET_WARN_SHARE` of the targets are already in their query's history, since with seen
    items excluded they can never be hit (duplicated rows, repeat consumption)."""
    ks = check_ks(ks)
    _check_vocab(model, prepared.data, "evaluate")
    es = prepared.split.test if on == "test" else prepared.split.valid
    if len(es) == 0:
        raise DynrecError(f"{prepared.name}: the {prepared.split.kind!r} split has no {on} targets")
    share = seen_target_share(es, max(model.n_items, prepared.data.n_items))
    if exclude_seen and share > SEEN_TARGET_WARN_SHARE:
        log.warning(
            "%s: %.0f%% of the %s targets are already in the user's own history and can never be hit "
            "while seen items are excluded (duplicated rows or repeat consumption?); see --keep-seen",
            prepared.name,
            100 * share,
            on,
        )
    index = ann_index(model, ann)
    if index is not None:
        return evaluate_retrieved(
            model,
            es,
            index,
            ks=ks,
            exclude_seen=exclude_seen,
            item_popularity=user_popularity(prepared.split.train),
            progress=progress,
        )
    return evaluate(
        model,
        es,
        ks=ks,
        exclude_seen=exclude_seen,
        item_popularity=user_popularity(prepared.split.train),
        progress=progress,
    )


def evaluate_retrieved(
    model: Recommender,
    evalset: EvalSet,
    index: AnnIndex,
    *,
    ks: tuple[int, ...] = (10,),
    exclude_seen: bool = True,
    item_popularity: np.ndarray | None = None,
    chunk_size: int = 1024,
    progress: bool = False,
) -> EvalResult:
    """The metrics of `dynrec.evaluation.offline.evaluate` for approximate retrieval: each query's
    top ``max(ks)`` comes from `index` (`dynrec.models.retrieval.retrieve`, seen items excluded
    unless `exclude_seen` is False) and a target's rank is its position in that list; a target the
    index does not return is a miss (rank inf), as it would be for a user served by the index. With
    an index that returns the exact top-K the metrics equal the exact evaluation's (ties aside).
    Coverage@k and Novelty@k use the retrieved lists."""
    ks = check_ks(ks)
    t0 = time.perf_counter()
    n_q = len(evalset)
    kmax = max(0, min(max(ks), model.n_items - 1))
    ranks = np.full(n_q, np.inf, dtype=np.float64)
    tops = np.zeros((n_q, kmax), dtype=np.int64)
    bar = tqdm(total=n_q, desc=f"evaluate {model.name} (ann)", unit="q", disable=not progress, leave=False)
    for a in range(0, n_q, max(1, chunk_size)):
        b = min(n_q, a + max(1, chunk_size))
        q = evalset.queries.slice(a, b)
        idx, scores = retrieve(model, q, kmax, index, exclude_seen=exclude_seen)
        idx = torch.where(torch.isfinite(scores), idx, torch.zeros_like(idx))  # unfilled slots
        tgt = torch.from_numpy(np.asarray(evalset.targets[a:b], dtype=np.int64))
        found = (idx == tgt[:, None]) & (tgt[:, None] > 0)
        pos = found.to(torch.int64).argmax(1).to(torch.float64)
        ranks[a:b] = torch.where(found.any(1), pos, torch.full_like(pos, np.inf)).numpy()
        tops[a:b, : idx.shape[1]] = idx.numpy()
        bar.update(b - a)
    bar.close()
    out = rank_report(ranks, tops, evalset, ks=ks, n_items=model.n_items, item_popularity=item_popularity)
    return EvalResult(out, ranks, time.perf_counter() - t0)


def check_unchanged(provenance: Provenance, prepared: Prepared) -> None:
    """Refuse data whose content (or split) differs from what the model was trained on."""
    p = provenance
    if prepared.events_hash != p.events_hash:
        raise DynrecError(
            f"{p.dataset} content changed since training: events hash {prepared.events_hash[:12]}… != "
            f"recorded {p.events_hash[:12]}… ({prepared.data.n_events} events in {prepared.location}, "
            f"{p.n_events} at training); retrain or pass the original data (--dataset / --data-dir)"
        )
    test_hash = prov_.targets_hash(prepared.data, prepared.split.test)
    if test_hash != p.test_hash:
        raise DynrecError(
            f"{p.dataset}: the {p.split!r} split's test targets differ from the recorded ones (hash "
            f"{test_hash[:12]}… != {p.test_hash[:12]}…, {len(prepared.split.test)} vs {p.n_test} targets); "
            "retrain with this version"
        )


def prepare_recorded(
    provenance: Provenance,
    data_dir: str | Path | None = None,
    *,
    dataset: str | None = None,
    columns: str | None = None,
) -> Prepared:
    """The dataset and split a model was trained on, checked against its recorded content hash.

    `dataset` points at another copy of the data (same content). A registered dataset that is no
    longer found through --data-dir / DYNREC_DATA_DIR is read from its recorded location."""
    p = provenance
    kw: dict[str, Any] = {"split": p.split, "cut": p.split_cut, "columns": columns or p.columns}
    try:
        prepared = prepare(dataset or p.dataset, data_dir=data_dir, **kw)
    except DatasetNotFoundError:
        if dataset is not None or p.dataset not in registry.DATASETS or not Path(p.location).is_file():
            raise
        prepared = prepare(p.dataset, data_dir=Path(p.location).parent, **kw)
    check_unchanged(p, prepared)
    return prepared


def _legacy_prepared(
    model: Recommender, dataset: str | None, data_dir: str | Path | None, what: str
) -> Prepared:
    """The split of a model saved before provenance was recorded (content cannot be checked)."""
    ds = dataset or model.meta.get("dataset")
    if ds is None:
        raise DynrecError(f"the model records neither provenance nor its dataset; {what}")
    log.warning(
        "the model records no provenance (saved by an older dynrec): cannot check that %s is unchanged "
        "since training; retrain to record it",
        ds,
    )
    cut = model.meta.get("split_cut")
    return prepare(str(ds), split=model.meta.get("split") or "loo", cut=cut, data_dir=data_dir)


def evaluate_saved(
    path: str | Path,
    *,
    dataset: str | None = None,
    split: SplitKind | None = None,
    data_dir: str | Path | None = None,
    ks: tuple[int, ...] = (10,),
    exclude_seen: bool = True,
    progress: bool = False,
    columns: str | None = None,
    options: RunOptions | None = None,
    ann: AnnConfig | AnnIndex | None = None,
) -> tuple[Recommender, EvalResult]:
    """Evaluate a saved model on the test targets of the split it was trained on (at the
    ``precision`` of `options`, see `scoring_model`; with `ann`, approximately: `evaluate_model`).

    Refuses (`DynrecError`) when the data changed since training (content hash), when `split`
    differs from the model's, and when the model's training included test targets (a resume on
    events that are test targets, or a resume by an older dynrec that replayed the whole dataset).
    Models saved before provenance was recorded still evaluate, with a warning."""
    ks = check_ks(ks)
    model = Recommender.load(path, options=options)
    provenance = prov_.from_meta(model.meta, source=f"{path}/config.json")
    trained_split = provenance.split if provenance is not None else model.meta.get("split")
    if split is not None and trained_split is not None and split != trained_split:
        raise DynrecError(
            f"{path} was trained with split {trained_split!r}; evaluating it on {split!r} would test on training events"
        )
    if provenance is None:
        if model.meta.get("update_files"):
            raise DynrecError(
                f"{path} was resumed (train --resume) by an older dynrec that replayed the whole dataset, "
                "test targets included, and recorded no provenance: its test metrics would be inflated; "
                "retrain it (and resume it again) with this version"
            )
        if dataset is None and model.meta.get("dataset") is None:
            raise DynrecError(f"{path}: the model does not record its dataset; pass --dataset")
        prepared = _legacy_prepared(model, dataset, data_dir, "pass --dataset")
        if split is not None and split != prepared.split.kind:
            prepared = prepare(str(dataset or model.meta["dataset"]), split=split, data_dir=data_dir)
    else:
        leaked = provenance.leaked()
        if leaked:
            n = sum(r.n_test_targets for r in leaked)
            raise DynrecError(
                f"{path}: its training included {n} test target(s) of its {provenance.split!r} split (in "
                f"{', '.join(r.path for r in leaked)}): evaluating it on that split would test on "
                "training events; evaluate the model saved before that resume, or retrain"
            )
        prepared = prepare_recorded(provenance, data_dir, dataset=dataset, columns=columns)
    model = scoring_model(model)
    res = evaluate_model(model, prepared, ks=ks, exclude_seen=exclude_seen, progress=progress, ann=ann)
    return model, res


# ---- what a model learned from ------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingHistory:
    """The events a model learned from, in the model's vocabulary: the training part of its
    recorded split plus the events of every resume (never validation or test targets)."""

    data: InteractionData
    prepared: Prepared
    provenance: Provenance | None


def read_resumed(entry: prov_.ResumedFile) -> EventLog:
    """A resumed event file, checked against the hash recorded when the model was resumed on it."""
    p = Path(entry.path)
    if not p.is_file():
        raise DynrecError(
            f"{p}: the model was resumed on this events file but it is gone; the model's training history "
            "cannot be rebuilt without it (restore it, or retrain)"
        )
    events = read_events(p, columns=column_map(entry.columns))
    got = prov_.events_hash(events)
    if got != entry.events_hash:
        raise DynrecError(
            f"{p} content changed since the model was resumed on it: events hash {got[:12]}… != recorded "
            f"{entry.events_hash[:12]}…; restore it, or retrain"
        )
    return events


def training_history(
    model: Recommender, data_dir: str | Path | None = None, *, dataset: str | None = None
) -> TrainingHistory:
    """What `model` learned from (see `TrainingHistory`), rebuilt from its recorded provenance (the
    data checked unchanged). Models without provenance use their recorded dataset and split."""
    assert model.item_vocab is not None and model.user_vocab is not None
    provenance = prov_.from_meta(model.meta)
    logs: list[EventLog] = []
    if provenance is None:
        prepared = _legacy_prepared(model, dataset, data_dir, "pass --history")
        logs = [read_events(Path(f)) for f in model.meta.get("update_files", []) if Path(f).is_file()]
    else:
        prepared = prepare_recorded(provenance, data_dir, dataset=dataset)
        logs = [read_resumed(r) for r in provenance.resumes]
    train = prepared.split.train
    _check_vocab(model, train, "use")
    parts = [(train.users, train.items, train.timestamps, train.weights, train.values)]
    n_users, n_items = model.user_vocab.size, model.item_vocab.size
    for lg in logs:
        d = InteractionData.from_events(
            lg, user_vocab=Vocabulary(model.user_vocab.ids), item_vocab=Vocabulary(model.item_vocab.ids)
        )
        keep = (d.users < n_users) & (d.items < n_items)  # ids the model never took in are dropped
        parts.append((d.users[keep], d.items[keep], d.timestamps[keep], d.weights[keep], d.values[keep]))
    users, items, ts, w, v = (np.concatenate([p[j] for p in parts]) for j in range(5))
    data = InteractionData.from_arrays(
        users,
        items,
        timestamps=ts,
        weights=w,
        values=v,
        user_vocab=model.user_vocab,
        item_vocab=model.item_vocab,
        has_time=train.has_time,
    )
    return TrainingHistory(data, prepared, provenance)
