"""The training job: a prepared split -> a fitted model, its provenance recorded, saved atomically.

`train` fits a model on the split's training part (validation for model selection only) and records
where it came from (its provenance, `dynrec.jobs.provenance.Lineage`) and how long the fit took
(`fit_seconds`); `validate` measures it on the validation targets (`TrainSummary`, what ``dynrec
train`` reports) and `evaluate_named` on the test targets (``dynrec evaluate MODEL_NAME``). With
`out` it saves the model and its item titles/tags through `save_model`, which writes the directory
the one way every writer of a model directory does (`dynrec.jobs.model_root.save_model_dir`: each
file in full to a temporary folder, then renamed into place). A reduced-precision scoring copy is
never saved. `load_config_file` reads a ``--config`` TOML file.

Reading and splitting the data is `dynrec.jobs.prepare`; evaluating, `dynrec.jobs.evaluate`; what a
saved model learned from, `dynrec.jobs.history`.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynrec.errors import DynrecError
from dynrec.jobs import items as items_
from dynrec.jobs.evaluate import Evaluation, evaluate_model, scoring_model
from dynrec.jobs.items import ItemInfo
from dynrec.jobs.model_root import save_model_dir
from dynrec.jobs.prepare import Prepared, prepare
from dynrec.jobs.provenance import Lineage
from dynrec.jobs.shifts import calibrate_for
from dynrec.models.base import Recommender
from dynrec.models.config import RunOptions
from dynrec.models.neural.quantize import is_quantized
from dynrec.models.registry import create_model
from dynrec.models.retrieval import AnnConfig, AnnIndex
from dynrec.online.shifts import ShiftCalibration
from dynrec.preprocessing.split import SplitKind
from dynrec.text import Encoder

__all__ = [
    "FIT_SECONDS",
    "TrainSummary",
    "evaluate_named",
    "fit_seconds",
    "load_config_file",
    "save_model",
    "train",
    "validate",
]

FIT_SECONDS = "fit_seconds"
"""Key of the fit's wall-clock seconds in a trained model's ``meta``."""


def fit_seconds(model: Recommender) -> float:
    """The seconds `model`'s fit took, as `train` (or `dynrec.jobs.replay.fit_for_replay`)
    recorded them; `DynrecError` for a model that records none."""
    seconds = model.meta.get(FIT_SECONDS)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise DynrecError(f"model {model.name!r} records no fit time (it was not trained by dynrec.jobs)")
    return float(seconds)


@dataclass(frozen=True)
class TrainSummary:
    """What ``dynrec train`` reports of a trained model (`validate`): its name, where it was
    saved, the fit's seconds, the rows the reader rejected (invalid) or dropped (exact
    duplicates), and the metrics on the split's validation targets."""

    model: str
    out: str
    fit_seconds: float
    n_invalid_rows: int
    n_duplicate_rows: int
    metrics: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "out": self.out,
            "fit_seconds": self.fit_seconds,
            "n_invalid_rows": self.n_invalid_rows,
            "n_duplicate_rows": self.n_duplicate_rows,
            **self.metrics,
        }


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
    where it came from (its provenance) and save it to `out` (`save_model`). Run-option keys
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
    model.meta[FIT_SECONDS] = time.perf_counter() - t0
    Lineage.trained(prepared.provenance()).write_to(model.meta)
    if text_meta is not None:
        model.meta["item_text"] = text_meta
    if out is not None:
        info = texts.info(vocab) or None
        save_model(model, out, info, calibrate_for(model, prepared.split.train, info))
    return model


def save_model(
    model: Recommender,
    out: str | Path,
    item_info: ItemInfo | None = None,
    shifts: ShiftCalibration | None = None,
) -> Path:
    """Save `model` (and `item_info`, as ``item_info.json``; the interest-shift calibration
    `shifts`, made on its training part by `train`, as ``shifts.json``) to `out` atomically
    (`dynrec.jobs.model_root.save_model_dir`), refusing a reduced-precision scoring copy
    (`quantize` / ``--set precision=...``): its layers are packed for scoring only; save the
    float32 model."""
    if is_quantized(model):
        raise DynrecError(
            f"{out}: refusing to save {model.name!r}: it is a {model.meta.get('inference_precision')} "
            "scoring copy (precision=...), for scoring only; save the float32 model instead"
        )
    return save_model_dir(model, out, item_info, shifts)


def validate(model_name: str, model: Recommender, prepared: Prepared, out: str | Path) -> TrainSummary:
    """`model`, trained as `model_name` on `prepared` by `train` and saved to `out`, measured on
    the split's validation targets (`dynrec.jobs.evaluate.evaluate_model`)."""
    res = evaluate_model(model, prepared, on="valid")
    rep = prepared.report
    return TrainSummary(
        model_name, str(out), fit_seconds(model), rep.n_invalid, rep.exact_duplicates, dict(res.metrics)
    )


def evaluate_named(
    model_name: str,
    dataset: str,
    *,
    split: SplitKind = "loo",
    data_dir: str | Path | None = None,
    columns: str | None = None,
    overrides: dict[str, str] | None = None,
    options: RunOptions | None = None,
    ks: tuple[int, ...] = (10,),
    exclude_seen: bool = True,
    progress: bool = False,
    ann: AnnConfig | AnnIndex | None = None,
) -> Evaluation:
    """Train `model_name` now on `dataset`'s `split` (`train`, nothing saved) and evaluate it on the
    split's test targets (`dynrec.jobs.evaluate.evaluate_model`, at the ``precision`` of `options`;
    with `ann`, approximately)."""
    prepared = prepare(dataset, split=split, data_dir=data_dir, columns=columns)
    model = scoring_model(train(model_name, prepared, overrides=overrides, options=options))
    res = evaluate_model(model, prepared, ks=ks, exclude_seen=exclude_seen, progress=progress, ann=ann)
    return Evaluation.of(model, res, ann)
