"""Jobs: what the CLI, the demo, the service and the benchmarks call. The only layer that touches
the model registry and the file system (datasets, saved models, event files). Each job answers a
typed result (a frozen dataclass; those the CLI prints have a ``to_json``)."""

from dynrec.jobs.catalogue import AddItemsResult, add_items
from dynrec.jobs.evaluate import (
    Evaluation,
    ann_index,
    evaluate_model,
    evaluate_retrieved,
    evaluate_saved,
    scoring_model,
)
from dynrec.jobs.explain import explain_items
from dynrec.jobs.export import ExportResult, export_events
from dynrec.jobs.history import TrainingHistory, training_history
from dynrec.jobs.items import read_item_info
from dynrec.jobs.prepare import Prepared, prepare
from dynrec.jobs.provenance import Lineage, Provenance
from dynrec.jobs.recommend import (
    ProfileResult,
    RecommendResult,
    SeedResult,
    history_batch,
    profile_for,
    recommend_for,
    seed_store,
)
from dynrec.jobs.replay import (
    ReplayRow,
    ReplayRun,
    check_replay_model,
    fit_for_replay,
    load_replay_data,
    run_replay,
)
from dynrec.jobs.resume import ResumeResult, resume_training
from dynrec.jobs.train import (
    TrainSummary,
    evaluate_named,
    fit_seconds,
    load_config_file,
    save_model,
    train,
    validate,
)

__all__ = [
    "AddItemsResult",
    "Evaluation",
    "ExportResult",
    "Lineage",
    "Prepared",
    "ProfileResult",
    "Provenance",
    "RecommendResult",
    "ReplayRow",
    "ReplayRun",
    "ResumeResult",
    "SeedResult",
    "TrainSummary",
    "TrainingHistory",
    "add_items",
    "ann_index",
    "check_replay_model",
    "evaluate_model",
    "evaluate_named",
    "evaluate_retrieved",
    "evaluate_saved",
    "explain_items",
    "export_events",
    "fit_for_replay",
    "fit_seconds",
    "history_batch",
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
    "validate",
]
