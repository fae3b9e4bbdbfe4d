"""Replay jobs: load a dataset cut for replay, train a model on its pre-cut events (its lineage,
`dynrec.jobs.provenance.Lineage.replay`, names the dataset and the replay protocol), check a saved
model belongs to a replay, and replay it (`run_replay`: one `ReplayRow` per mode)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dynrec.data import registry
from dynrec.data.dataset import InteractionData
from dynrec.errors import DynrecError
from dynrec.evaluation.report import plot_windows, require_plots
from dynrec.jobs.model_root import save_model_dir
from dynrec.jobs.provenance import Lineage, from_meta
from dynrec.jobs.train import FIT_SECONDS
from dynrec.models.base import Recommender
from dynrec.models.registry import create_model
from dynrec.models.retrieval import AnnConfig
from dynrec.online.updater import UpdateConfig
from dynrec.replay import (
    MODES,
    Mode,
    ReplayConfig,
    ReplayData,
    ReplayResult,
    holdout_last,
    replay,
    replay_split,
)

__all__ = [
    "ReplayRow",
    "ReplayRun",
    "check_replay_model",
    "fit_for_replay",
    "load_replay_data",
    "run_replay",
]


@dataclass(frozen=True)
class ReplayRow:
    """One mode of `run_replay`: the engine's `ReplayResult` (without its final model) and, on a
    `dynrec data synth` folder, the hit rate at `k` of the data's oracle."""

    result: ReplayResult
    k: int
    oracle_hr: float | None = None

    @property
    def hr(self) -> float:
        return self.result.metrics[f"HR@{self.k}"]

    @property
    def ndcg(self) -> float:
        return self.result.metrics[f"NDCG@{self.k}"]

    @property
    def n_events(self) -> int:
        """Events replayed (predicted, then revealed)."""
        return int(self.result.metrics["n_events"])

    @property
    def events_per_s(self) -> float:
        return self.result.timing["events_per_s"]

    @property
    def hr_vs_oracle(self) -> float | None:
        """The hit rate as a share of the oracle's (0 when the oracle hits nothing), or None."""
        if self.oracle_hr is None:
            return None
        return self.hr / self.oracle_hr if self.oracle_hr else 0.0

    def to_json(self) -> dict[str, Any]:
        """`ReplayResult.to_json`, with ``oracle_HR@k`` and ``HR@k_vs_oracle`` when there is an oracle."""
        row = self.result.to_json()
        if self.oracle_hr is not None:
            row[f"oracle_HR@{self.k}"] = self.oracle_hr
            row[f"HR@{self.k}_vs_oracle"] = self.hr_vs_oracle
        return row


@dataclass(frozen=True)
class ReplayRun:
    """What `run_replay` measured: one row per mode, in the order asked."""

    rows: tuple[ReplayRow, ...]

    def to_json(self) -> dict[str, Any]:
        """One mode: its row; several: ``{"results": [row, ...]}``."""
        if len(self.rows) == 1:
            return self.rows[0].to_json()
        return {"results": [r.to_json() for r in self.rows]}


def load_replay_data(
    dataset: str,
    *,
    data_dir: str | None = None,
    quantile: float | None = None,
    last_n: int | None = None,
) -> ReplayData:
    """A registered dataset (or event file) cut for replay: by time (`quantile`, default 0.8) when
    it has timestamps, else each user's last `last_n` (default 10) events."""
    events = registry.load(dataset, data_dir)
    data = InteractionData.from_events(events, event_weights=events.event_weights)
    if last_n is None and quantile is None and not data.has_time:
        last_n = 10
    if last_n is not None:
        return replay_split(data, last_n=last_n, name=dataset)
    return replay_split(data, quantile=quantile if quantile is not None else 0.8, name=dataset)


def fit_for_replay(
    model_name: str,
    rd: ReplayData,
    *,
    overrides: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
) -> Recommender:
    """Train `model_name` on the pre-cut events (each user's last pre-cut event validates)."""
    model = create_model(model_name, overrides, config)
    train, valid = holdout_last(rd.train)
    t0 = time.perf_counter()
    model.fit(train, valid)
    model.meta[FIT_SECONDS] = time.perf_counter() - t0
    Lineage.replay(rd.name, rd.protocol).write_to(model.meta)
    # the model's vocabulary is the pre-cut one (train shares it)
    return model


def check_replay_model(model: Recommender, rd: ReplayData) -> None:
    """Refuse a saved model that was not trained on exactly this replay's pre-cut events."""
    lineage = from_meta(model.meta)
    if (
        lineage.replay_protocol != rd.protocol
        or lineage.dataset != rd.name
        or model.item_vocab != rd.train.item_vocab
    ):
        raise DynrecError(
            f"this model was not trained for the replay of {rd.name!r} ({rd.protocol}): it would have "
            "seen replayed events. Train it for the replay: `dynrec replay MODEL --dataset D --save-model DIR`"
        )


def run_replay(
    target: str | Path,
    dataset: str,
    *,
    modes: Sequence[str] = ("state",),
    last_n: int | None = None,
    quantile: float | None = None,
    update_every: int = 0,
    update_every_time: int = 0,
    n_updates: int = 4,
    delay: int = 0,
    update: UpdateConfig | None = None,
    k: int = 10,
    overrides: dict[str, str] | None = None,
    save_model: str | Path | None = None,
    plot: str | Path | None = None,
    data_dir: str | Path | None = None,
    ann: AnnConfig | None = None,
) -> ReplayRun:
    """Replay `dataset` (a registered name, an event file, or a `dynrec data synth` folder, whose
    oracle is then reported) with each mode, from one model: `target` is a saved model directory
    trained for this replay, or a model name trained now on the pre-cut events. One row per mode;
    with `plot`, a PNG of NDCG@k over the stream; with `ann`, every prediction through an
    approximate index over the model's item table (`ReplayConfig.ann`)."""
    for m in modes:
        if m not in MODES:
            raise DynrecError(f"mode must be one of {', '.join(MODES)}, got {m!r}")
    if plot is not None:
        require_plots()  # say so before the replay, not after it
    ds_path = Path(dataset)
    oracle = None
    if ds_path.is_dir() and (ds_path / "events.csv").exists():
        from dynrec.data.synthetic import load_oracle

        if (ds_path / "oracle.csv").exists():
            oracle = load_oracle(ds_path)
        dataset = str(ds_path / "events.csv")
    rd = load_replay_data(
        dataset, data_dir=str(data_dir) if data_dir else None, quantile=quantile, last_n=last_n
    )
    rows: list[ReplayRow] = []
    with tempfile.TemporaryDirectory(prefix="dynrec-replay-") as tmp:
        if Path(target).is_dir():
            src = Path(target)
            check_replay_model(Recommender.load(src), rd)
        else:
            trained = fit_for_replay(str(target), rd, overrides=overrides)
            src = Path(save_model) if save_model is not None else Path(tmp) / "model"
            save_model_dir(trained, src)  # --save-model: written like every model directory
        for m in modes:
            model = Recommender.load(src)  # every mode starts from the same weights
            mode: Mode = m  # type: ignore[assignment]  # checked against MODES above
            cfg = ReplayConfig(
                mode=mode,
                k=k,
                update_every=update_every,
                update_every_time=update_every_time,
                n_updates=n_updates,
                delay=delay,
                update=update or UpdateConfig(),
                ann=ann,
            )
            result = replace(replay(model, rd, cfg), final_model=None)  # rows keep no model alive
            o_hr: float | None = None
            if oracle is not None:
                from dynrec.data.synthetic import oracle_ranks_for

                d = rd.data
                users = d.user_vocab.to_ids(d.users[rd.stream])
                ranks = oracle_ranks_for(oracle, users, d.timestamps[rd.stream])
                o_hr = float((ranks < k).mean()) if len(ranks) else 0.0
            rows.append(ReplayRow(result, k, o_hr))
    run = ReplayRun(tuple(rows))
    if plot is not None:
        plot_windows(
            [r.to_json() for r in run.rows],
            Path(plot),
            metric=f"NDCG@{k}",
            title=f"{target} on {Path(dataset).name}: NDCG@{k}",
        )
    return run
