"""Streaming (prequential) replay: the stream (`stream`), the engine that replays it
(`engine`), and the update strategies between segments (`strategies`)."""

from dynrec.replay.engine import MODES, Mode, ReplayConfig, ReplayResult, replay
from dynrec.replay.stream import ReplayData, holdout_last, replay_split, revealed_data

__all__ = [
    "MODES",
    "Mode",
    "ReplayConfig",
    "ReplayData",
    "ReplayResult",
    "holdout_last",
    "replay",
    "replay_split",
    "revealed_data",
]
