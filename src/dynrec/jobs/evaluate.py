"""Evaluation jobs: a model on its split's test targets, and a saved model on the split it was
trained on.

A saved model records its provenance (`dynrec.jobs.provenance`: dataset, absolute location,
content hash, split, hash of the split's test targets, resumed files), so `evaluate_saved`
rebuilds exactly the split it was trained on (`dynrec.jobs.prepare.prepare_recorded`), refuses
when the data changed since training or when the model's training included test targets, and no
model is ever evaluated on events it trained on.

`evaluate_saved` (and `dynrec.jobs.train.evaluate_named`, a model trained now) answer an
`Evaluation`: the metrics and how the model was scored.

Scoring a loaded model (recommend, evaluate, serve) goes through `scoring_model` (the run option
``precision``: an int8/bf16 scoring copy of a neural model) and, when asked, an approximate
index (`ann_index`: a FAISS index over a `QueryEmbeddings` model's item table). Evaluation stays
exact by default; with an index it ranks each target within the index's top-K
(`evaluate_retrieved`, the algorithm in `dynrec.evaluation.retrieved`), so its metrics are those
of the approximate retrieval.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynrec.data.query import QueryBatch, check_k
from dynrec.errors import DynrecError
from dynrec.evaluation import retrieved as retrieved_
from dynrec.evaluation.offline import EvalResult, evaluate, user_popularity
from dynrec.jobs import provenance as prov_
from dynrec.jobs.prepare import Prepared, check_vocab, legacy_prepared, prepare, prepare_recorded
from dynrec.models.base import Recommender
from dynrec.models.capabilities import QueryEmbeddings
from dynrec.models.config import RunOptions
from dynrec.models.neural.quantize import apply_precision
from dynrec.models.retrieval import AnnConfig, AnnIndex, retrieve
from dynrec.preprocessing.split import EvalSet, SplitKind

log = logging.getLogger(__name__)

__all__ = [
    "SEEN_TARGET_WARN_SHARE",
    "Evaluation",
    "ann_index",
    "check_ks",
    "evaluate_model",
    "evaluate_retrieved",
    "evaluate_saved",
    "scoring_model",
    "seen_target_share",
]

SEEN_TARGET_WARN_SHARE = 0.1
"""Warn when more than this share of test targets is already in the query's own history: with
seen items excluded they can never be hit (typically duplicated rows or repeat consumption)."""


@dataclass(frozen=True)
class Evaluation:
    """What ``dynrec evaluate`` measures: the model as scored (`scoring_model`), its metrics on the
    test targets, the approximate index kind that retrieved for it (None: exact) and the reduced
    precision it scored at (None: float32)."""

    model: Recommender
    result: EvalResult
    retrieval: str | None = None
    precision: str | None = None

    @property
    def metrics(self) -> dict[str, float]:
        return self.result.metrics

    def to_json(self) -> dict[str, Any]:
        """The metrics, then ``"retrieval"`` and ``"precision"`` when not exact float32."""
        out: dict[str, Any] = dict(self.result.metrics)
        if self.retrieval is not None:
            out["retrieval"] = self.retrieval
        if self.precision is not None:
            out["precision"] = self.precision
        return out

    @classmethod
    def of(cls, model: Recommender, result: EvalResult, ann: AnnConfig | AnnIndex | None) -> Evaluation:
        """`result` of `model` (a scoring copy), retrieved through an index built with `ann`."""
        kind = None if ann is None else ann.kind if isinstance(ann, AnnConfig) else ann.config.kind
        precision = model.options.precision
        return cls(model, result, kind, None if precision == "float32" else precision)


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
    check_vocab(model, prepared.data, "evaluate")
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
    """The metrics of `dynrec.evaluation.offline.evaluate` for approximate retrieval
    (`dynrec.evaluation.retrieved.evaluate_retrieved`): each query's top ``max(ks)`` comes from
    `index` (`dynrec.models.retrieval.retrieve`, seen items excluded unless `exclude_seen` is
    False) and a target's rank is its position in that list; a target the index does not return
    is a miss (rank inf), as it would be for a user served by the index. With an index that
    returns the exact top-K the metrics equal the exact evaluation's (ties aside). Coverage@k and
    Novelty@k use the retrieved lists."""
    ks = check_ks(ks)

    def search(q: QueryBatch, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return retrieve(model, q, k, index, exclude_seen=exclude_seen)

    return retrieved_.evaluate_retrieved(
        search,
        evalset,
        n_items=model.n_items,
        name=model.name,
        ks=ks,
        item_popularity=item_popularity,
        chunk_size=chunk_size,
        progress=progress,
    )


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
) -> Evaluation:
    """Evaluate a saved model on the test targets of the split it was trained on (at the
    ``precision`` of `options`, see `scoring_model`; with `ann`, approximately: `evaluate_model`).

    Refuses (`DynrecError`) when the data changed since training (content hash), when `split`
    differs from the model's, and when the model's training included test targets (a resume on
    events that are test targets, or a resume by an older dynrec that replayed the whole dataset).
    Models saved before provenance was recorded still evaluate, with a warning."""
    ks = check_ks(ks)
    model = Recommender.load(path, options=options)
    lineage = prov_.from_meta(model.meta, source=f"{path}/config.json")
    provenance = lineage.provenance
    if split is not None and lineage.split is not None and split != lineage.split:
        raise DynrecError(
            f"{path} was trained with split {lineage.split!r}; evaluating it on {split!r} would test on training events"
        )
    if provenance is None:
        if lineage.legacy_updates:
            raise DynrecError(
                f"{path} was resumed (train --resume) by an older dynrec that replayed the whole dataset, "
                "test targets included, and recorded no provenance: its test metrics would be inflated; "
                "retrain it (and resume it again) with this version"
            )
        if dataset is None and lineage.dataset is None:
            raise DynrecError(f"{path}: the model does not record its dataset; pass --dataset")
        prepared = legacy_prepared(lineage, dataset, data_dir, "pass --dataset")
        if split is not None and split != prepared.split.kind:
            prepared = prepare(str(dataset or lineage.dataset), split=split, data_dir=data_dir)
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
    return Evaluation.of(model, res, ann)
