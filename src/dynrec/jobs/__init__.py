"""Jobs: what the CLI, the demo, the service and the benchmarks call. The only layer that touches
the model registry and the file system (datasets, saved models, event files)."""

from dynrec.jobs.catalogue import add_items
from dynrec.jobs.evaluate import ann_index, evaluate_model, evaluate_retrieved, evaluate_saved, scoring_model
from dynrec.jobs.explain import explain_items, interest_profile
from dynrec.jobs.export import export_events
from dynrec.jobs.history import training_history
from dynrec.jobs.items import read_item_info
from dynrec.jobs.prepare import Prepared, prepare
from dynrec.jobs.provenance import Provenance
from dynrec.jobs.recommend import history_batch, profile_for, recommend_for, seed_store
from dynrec.jobs.replay import check_replay_model, fit_for_replay, load_replay_data, run_replay
from dynrec.jobs.resume import resume_training
from dynrec.jobs.train import load_config_file, save_model, train

__all__ = [
    "Prepared",
    "Provenance",
    "add_items",
    "ann_index",
    "check_replay_model",
    "evaluate_model",
    "evaluate_retrieved",
    "evaluate_saved",
    "explain_items",
    "export_events",
    "fit_for_replay",
    "history_batch",
    "interest_profile",
    "load_config_file",
    "load_replay_data",
    "prepare",
    "profile_for",
    "read_item_info",
    "recommend_for",
    "resume_training",
    "run_replay",
    "save_model",
    "scoring_model",
    "seed_store",
    "train",
    "training_history",
]
