"""Reading a dataset and splitting it: what every offline job starts from.

`prepare` reads a registered dataset or an event file, indexes it and splits it (`Prepared`, with
the location and content hash provenance needs). `prepare_recorded` rebuilds the split a saved
model was trained on from its recorded provenance (`dynrec.jobs.provenance`) and refuses data whose
content changed since training (`check_unchanged`); `legacy_prepared` is the same for a model saved
before provenance was recorded (from its `Lineage`; content unchecked, with a warning).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynrec.data import registry
from dynrec.data.dataset import InteractionData
from dynrec.data.events import EventLog, ValidationReport
from dynrec.data.io import ColumnMap, parse_columns, read_events
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DatasetNotFoundError, DynrecError
from dynrec.jobs import provenance as prov_
from dynrec.jobs.provenance import Lineage, Provenance
from dynrec.models.base import Recommender
from dynrec.preprocessing.split import Split, SplitKind, make_split

log = logging.getLogger(__name__)


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
    through `registry.search_places`); a file path becomes absolute, so the model
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


def legacy_prepared(
    lineage: Lineage, dataset: str | None, data_dir: str | Path | None, what: str
) -> Prepared:
    """The split of a model without provenance (saved before it was recorded: content cannot be
    checked), from its `lineage`; `dataset` points at another copy of the data."""
    ds = dataset or lineage.dataset
    if ds is None:
        raise DynrecError(f"the model records neither provenance nor its dataset; {what}")
    if lineage.split == "replay":
        raise DynrecError(
            f"{ds}: the model was trained for a replay ({lineage.replay_protocol}), on no train/test "
            f"split; {what}"
        )
    log.warning(
        "the model records no provenance (saved by an older dynrec): cannot check that %s is unchanged "
        "since training; retrain to record it",
        ds,
    )
    return prepare(str(ds), split=lineage.split or "loo", cut=lineage.split_cut, data_dir=data_dir)


def _extends(model_vocab: Vocabulary, data_vocab: Vocabulary) -> bool:
    """The model's vocabulary is the data's, possibly grown afterwards (resumes append ids)."""
    n = len(data_vocab)
    return len(model_vocab) >= n and tuple(model_vocab.ids[:n]) == tuple(data_vocab.ids)


def check_vocab(model: Recommender, data: InteractionData, what: str) -> None:
    """Refuse `data` whose item or user vocabulary the model's does not extend (`what`: the verb
    of the message, e.g. "evaluate")."""
    for kind, mv, dv in (
        ("item", model.item_vocab, data.item_vocab),
        ("user", model.user_vocab, data.user_vocab),
    ):
        if mv is not None and not _extends(mv, dv):
            raise DynrecError(
                f"the model's {kind} vocabulary differs from this dataset's: {what} it on the dataset it "
                "was trained on"
            )
