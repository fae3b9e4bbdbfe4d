"""Interest-shift calibration: the detector's ``k`` and ``h`` from a model's training histories,
and their file in a model directory (``shifts.json``).

`calibrate`, on the model's training histories (each user's last
`ShiftConfig.calibration_length` events) — no guessed constants:

* ``same`` = median distance of a user's next event to their long-term interest; ``random`` =
  median distance of a random event (drawn from all histories, so popularity-weighted) to the same
  interests; ``k`` halfway between.
* a first ``h`` from a bootstrap (the CUSUM over independently drawn observed distances); the
  detector with it cuts every history into stretches between the runs that made shifts, and
  ``same`` (so ``k``) is re-estimated without those runs' distances.
* users whose interests do not change are simulated from the data: each stretch, its events in
  random order. ``h`` is the smallest threshold at which the detector (restarts included) flags
  at most `ShiftConfig.false_alarms_per_1000` shifts per 1,000 of their events — the one
  documented parameter. Item vectors fit the training users best, so on users or events the model
  never saw the rate is higher (measured in ``benchmarks/shifts.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from dynrec.errors import DynrecError
from dynrec.online.shifts import ShiftCalibration, ShiftConfig, ShiftSpace, run_histories

__all__ = ["SHIFT_FILE", "calibrate", "load_calibration", "save_calibration"]

SHIFT_FILE = "shifts.json"
"""The calibration's file in a model directory."""

IntArray = npt.NDArray[np.int64]


def save_calibration(directory: str | Path, cal: ShiftCalibration) -> None:
    (Path(directory) / SHIFT_FILE).write_text(json.dumps(cal.to_json(), indent=2) + "\n")


def load_calibration(directory: str | Path) -> ShiftCalibration | None:
    """The calibration saved with a model, or None (a model saved without one)."""
    p = Path(directory) / SHIFT_FILE
    if not p.is_file():
        return None
    try:
        raw = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise DynrecError(f"{p.name}: unreadable ({e})") from e
    return ShiftCalibration.from_json(raw)


def calibrate(
    histories: Sequence[IntArray], space: ShiftSpace, cfg: ShiftConfig | None = None
) -> ShiftCalibration:
    """The detector's constants from training histories (item indices in time order; see the
    module docstring)."""
    cfg = cfg or ShiftConfig()
    rng = np.random.default_rng(cfg.seed)
    hs = [np.asarray(h, dtype=np.int64) for h in histories]
    hs = [h[h > 0][-cfg.calibration_length :] for h in hs]
    hs = [h for h in hs if len(h) > cfg.warmup]
    if len(hs) > cfg.calibration_users:
        hs = [hs[i] for i in sorted(rng.choice(len(hs), cfg.calibration_users, replace=False))]
    if not hs:
        raise DynrecError(f"cannot calibrate shift detection: no history longer than {cfg.warmup} events")
    probe = ShiftCalibration(np.inf, np.inf, 0.0, 0.0, 0, space.kind, 0.0, cfg)
    # the distances of own events, and of random events against the same interests
    own: list[npt.NDArray[np.float64]] = []
    rand: list[torch.Tensor] = []
    run_histories(hs, space, probe, distances=own, probes=(rng, np.concatenate(hs), rand))
    x = own[0]
    xr = torch.cat(rand).numpy()
    if x.size < 100:
        raise DynrecError(f"cannot calibrate shift detection: {x.size} events past the warm-up (need 100)")
    same, random_ = float(np.median(x)), float(np.median(xr))
    k = 0.5 * (same + random_)
    h = _threshold(x - k, cfg, rng)  # a first guess: the CUSUM over independent draws
    # the detector with that guess segments every history; the distances outside the runs that
    # made shifts (the new interest, not everyday noise) re-estimate `same`
    own = []
    runs: list[tuple[IntArray, IntArray, int]] = []
    guess = ShiftCalibration(k, h, same, random_, 0, space.kind, 0.0, cfg)
    run_histories(hs, space, guess, distances=own, runs=runs)
    x = own[0]
    same = float(np.median(x))
    k = 0.5 * (same + random_)
    # users whose interests do not change: each draws its events from one of its own stable
    # segments, in random order; h is where the detector flags the target rate on them
    null = _null_histories(hs, runs, cfg, rng)
    h = _null_threshold(null, space, ShiftCalibration(k, h, same, random_, 0, space.kind, 0.0, cfg))
    return ShiftCalibration(k, h, same, random_, int(x.size), space.kind, 0.0, cfg)


def _null_histories(
    hs: Sequence[IntArray],
    runs: Sequence[tuple[IntArray, IntArray, int]],
    cfg: ShiftConfig,
    rng: np.random.Generator,
) -> list[IntArray]:
    """Every stretch of a history between the runs that made shifts (longer than the warm-up),
    its events in random order: users whose interests do not change."""
    cuts: dict[int, list[tuple[int, int]]] = {}
    for rows, starts, t in runs:
        for r, a in zip(rows.tolist(), starts.tolist(), strict=True):
            cuts.setdefault(r, []).append((a, t))
    out = []
    for r, h in enumerate(hs):
        lo = 0
        for a, t in [*sorted(cuts.get(r, [])), (len(h), len(h))]:
            if a - lo > cfg.warmup:
                out.append(rng.permutation(h[lo:a]))
            lo = t + 1
    return out


def _null_threshold(null: Sequence[IntArray], space: ShiftSpace, guess: ShiftCalibration) -> float:
    """The smallest h (to 1 %) at which the detector flags at most ``false_alarms_per_1000`` per
    1,000 events past the warm-up of the `null` users."""
    cfg = guess.config
    if not null:
        return guess.threshold
    n_events = sum(len(h) - cfg.warmup for h in null)

    def rate(h: float) -> float:
        hits: list[tuple[IntArray, int]] = []
        cal = ShiftCalibration(guess.reference, h, guess.same, guess.random, 0, space.kind, 0.0, cfg)
        run_histories(null, space, cal, alarms=hits)
        return 1000.0 * sum(len(rows) for rows, _ in hits) / n_events

    return _smallest(rate, max(guess.threshold, 1e-3), cfg.false_alarms_per_1000)


def _smallest(rate: Callable[[float], float], start: float, target: float) -> float:
    """The smallest threshold (to 1 %, or 0.001) whose alarm `rate` is at most `target` (rates
    fall as the threshold grows)."""
    lo, hi = 0.0, start
    while rate(hi) > target:
        lo, hi = hi, hi * 1.5
        if hi > 1e4:
            raise DynrecError("cannot calibrate shift detection: the distances never settle")
    while hi - lo > max(0.01 * hi, 1e-3):  # an absolute floor: no alarm at all still ends
        mid = 0.5 * (lo + hi)
        if rate(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def _threshold(increments: npt.NDArray[np.float64], cfg: ShiftConfig, rng: np.random.Generator) -> float:
    """The smallest h at which a CUSUM over increments drawn from `increments` alarms at most
    ``false_alarms_per_1000`` per 1,000 steps (restarting at 0 after each alarm)."""
    draws = rng.choice(increments, (cfg.bootstrap_chains, cfg.bootstrap_length))

    def rate(h: float) -> float:
        s = np.zeros(cfg.bootstrap_chains)
        alarms = 0
        for t in range(cfg.bootstrap_length):
            s = np.maximum(0.0, s + draws[:, t])
            hit = s >= h
            alarms += int(hit.sum())
            s[hit] = 0.0
        return 1000.0 * alarms / draws.size

    return _smallest(rate, float(max(increments.max(), 1e-3)), cfg.false_alarms_per_1000)
