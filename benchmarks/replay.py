"""Replay: static / state / incremental / retrain for each model on a stream, predict -> reveal -> update.

ml-100k: global temporal cut at 80% of event time; ml-1m (order only): each user's last 10 events,
interleaved across users; a `dynrec data synth` folder: temporal cut, and every mode is also
reported as a fraction of the oracle's HR@10 on the same events. Each model is trained once on the
pre-cut events (each user's last pre-cut event validates) and cached; every mode starts from a
fresh copy of it, so the modes differ only in what happens during the stream. One record per
dataset/model/mode in results/replay.json, and one PNG of NDCG@10 over the stream per
dataset/model in results/replay_<dataset>_<model>.png.

For the incremental and retrain modes, *forgetting* is measured too: NDCG@10 on the pre-cut
validation targets before the replay and after its last update.

    python -m benchmarks.replay --dataset ml-100k --models itemknn,als,gru4rec,sasrec
    python -m benchmarks.replay --dataset ml-1m --models itemknn,als --n-updates 3
    dynrec data synth --out synth && python -m benchmarks.replay --dataset synth --models sasrec

A model saved for this replay (`dynrec replay MODEL --dataset D --save-model DIR`) can be measured
instead of the cached one with ``--model-dir DIR``; ``--variant LABEL`` then keys its records apart
(``<dataset>/<model>/<mode> (LABEL)``, e.g. a speed check on another machine or with a cheaper
model) so they never replace the main ones, and ``--note`` says how the model was trained:

    python -m benchmarks.replay --dataset ml-1m --models sasrec --modes state \
        --model-dir DIR --variant "1-epoch model, CPU" --note "sasrec trained 1 epoch"
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import RESULTS, load, put, record
from dynrec.evaluation.offline import evaluate
from dynrec.evaluation.report import plot_windows
from dynrec.jobs import fit_for_replay, load_replay_data
from dynrec.jobs.replay import check_replay_model
from dynrec.models.base import Recommender
from dynrec.online.updater import UpdateConfig
from dynrec.replay import MODES, ReplayConfig, ReplayData, holdout_last, replay


def _params(label: str, name: str, mode: str, protocol: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "dataset": label,
        "model": name,
        "mode": mode,
        "protocol": protocol,
        "n_updates": args.n_updates,
        "update_epochs": args.update_epochs,
        "update_lr": args.update_lr,
    }


def _device(model: Recommender) -> str:
    import torch

    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device) and dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu x{torch.get_num_threads()}"


def _oracle(rd: ReplayData, folder: Path | None) -> Any:
    if folder is None or not (folder / "oracle.csv").exists():
        return None
    from dynrec.data.synthetic import load_oracle, oracle_ranks_for

    d = rd.data
    return oracle_ranks_for(
        load_oracle(folder), d.user_vocab.to_ids(d.users[rd.stream]), d.timestamps[rd.stream]
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="ml-100k", help="registered name, event file or synth folder")
    ap.add_argument("--name", default=None, help="dataset label in the results (default: --dataset)")
    ap.add_argument("--models", default="itemknn,als,gru4rec,sasrec")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--last-n", type=int, default=None)
    ap.add_argument("--quantile", type=float, default=None)
    ap.add_argument("--n-updates", type=int, default=4, help="segments (updates = segments - 1)")
    ap.add_argument("--update-epochs", type=int, default=1)
    ap.add_argument("--update-lr", type=float, default=0.0, help="update learning rate (0: the model's)")
    ap.add_argument("--replay-ratio", type=float, default=1.0)
    ap.add_argument("--set", action="append", default=[], help="MODEL.key=value config override")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dynrec-replay-models")
    ap.add_argument("--plot-dir", type=Path, default=RESULTS)
    ap.add_argument("--refit", action="store_true", help="ignore cached trained models")
    ap.add_argument("--model-dir", type=Path, default=None, help="a model saved for this replay (one model)")
    ap.add_argument("--variant", default="", help="label keying these records apart from the main ones")
    ap.add_argument(
        "--note", default="", help="note stored with each record (e.g. how the model was trained)"
    )
    args = ap.parse_args()
    if args.model_dir is not None and "," in args.models:
        ap.error("--model-dir measures one model: pass a single name in --models")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    folder = Path(args.dataset) if Path(args.dataset).is_dir() else None
    dataset = str(folder / "events.csv") if folder is not None else args.dataset
    ds_key = folder.name if folder is not None else args.dataset
    label = args.name or ds_key
    rd = load_replay_data(dataset, quantile=args.quantile, last_n=args.last_n)
    rd = ReplayData(rd.data, rd.train, rd.stream, rd.time, rd.pre_end, rd.protocol, label)
    oracle = _oracle(rd, folder)
    print(f"{label}: {len(rd)} replayed events ({rd.protocol}), {rd.train.n_events} pre-cut", flush=True)
    for name in args.models.split(","):
        overrides = {
            s.split("=", 1)[0].split(".", 1)[1]: s.split("=", 1)[1]
            for s in args.set
            if s.split(".", 1)[0] == name
        }
        cache = args.cache / f"{ds_key}-{rd.protocol.replace('>=', 'ge')}-{name}"
        if args.model_dir is not None:
            cache = args.model_dir
            check_replay_model(Recommender.load(cache), rd)
        elif args.refit or not (cache / "config.json").exists():
            t0 = time.perf_counter()
            model = fit_for_replay(name, rd, overrides=overrides)
            model.save(cache)
            print(f"{name}: trained in {time.perf_counter() - t0:.0f}s", flush=True)
        base = Recommender.load(cache)
        _, valid = holdout_last(rd.train)
        old_before = evaluate(base, valid, extra=False).metrics["NDCG@10"]
        for mode in args.modes.split(","):
            model = Recommender.load(cache)
            cfg = ReplayConfig(
                mode=mode,  # type: ignore[arg-type]
                n_updates=args.n_updates,
                update=UpdateConfig(
                    epochs=args.update_epochs, learning_rate=args.update_lr, replay_ratio=args.replay_ratio
                ),
            )
            res = replay(model, rd, cfg)
            row: dict[str, Any] = {
                **res.to_json(),
                "fit_seconds": float(base.meta.get("fit_seconds", 0.0)),
                "best_epoch": base.meta.get("best_epoch"),
            }
            if oracle is not None:
                o_hr = float((oracle < 10).mean())
                row["oracle_HR@10"] = o_hr
                row["oracle_NDCG@10"] = float(
                    np.where(oracle < 10, 1.0 / np.log2(np.minimum(oracle, 10) + 2.0), 0.0).mean()
                )
                row["HR@10_vs_oracle"] = row["HR@10"] / o_hr if o_hr else float("nan")
            if mode in ("incremental", "retrain") and res.final_model is not None:
                row["old_ndcg_before"] = old_before
                row["old_ndcg_after"] = evaluate(res.final_model, valid, extra=False).metrics["NDCG@10"]
            command = f"python -m benchmarks.replay --dataset {args.dataset} --models {name} --modes {mode}"
            if args.n_updates != 4:
                command += f" --n-updates {args.n_updates}"
            for flag, value, default in (
                ("--update-epochs", args.update_epochs, 1),
                ("--update-lr", args.update_lr, 0.0),
                ("--replay-ratio", args.replay_ratio, 1.0),
            ):
                command += f" {flag} {value}" if value != default else ""
            if args.model_dir is not None:
                command += " --model-dir DIR"
            params = _params(label, name, mode, rd.protocol, args)
            key = f"{label}/{name}/{mode}"
            if args.variant:
                params["variant"] = args.variant
                key += f" ({args.variant})"
                command += f' --variant "{args.variant}"'
            row = {
                k: v for k, v in row.items() if k not in ("dataset", "model", "mode", "protocol", "updates")
            }
            put(record("replay", key, params, row, command, device=_device(model), note=args.note))
            print(
                f"{name:8s} {mode:12s} HR@10 {row['HR@10']:.4f} NDCG@10 {row['NDCG@10']:.4f} "
                f"{row['events_per_s']:.0f} ev/s, {row['seconds']:.0f}s (updates {row['update_seconds']:.0f}s)",
                flush=True,
            )
            if args.variant:
                continue  # the plot shows the main records of this dataset and model
            stored = {
                r["params"]["mode"]: r["metrics"]
                for r in load("replay")
                if r["key"].startswith(f"{label}/{name}/") and not r["params"].get("variant")
            }
            plot_windows(
                [{"mode": m, **stored[m]} for m in MODES if m in stored],
                args.plot_dir / f"replay_{label}_{name}.png",
                title=f"{name} on {label} ({rd.protocol}): NDCG@10 per window",
                reference=row.get("oracle_NDCG@10"),
            )
    print("python -m benchmarks.pages  # to render the page")


if __name__ == "__main__":
    main()
