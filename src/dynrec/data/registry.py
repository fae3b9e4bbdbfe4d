"""Datasets by name, resolved from an explicit path, ``DYNREC_DATA_DIR`` or the user cache dir."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dynrec.data.events import EventLog
from dynrec.data.io import Format, read_events
from dynrec.errors import DatasetNotFoundError


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str
    files: tuple[str, ...]  # candidates inside the folder, first found wins
    format: Format
    description: str


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec(
            "ml-100k",
            "ml-100k",
            ("u.data", "ml-100k.inter"),
            "ml-100k",
            "MovieLens 100K ratings with timestamps (943 users, 1,682 items)",
        ),
        DatasetSpec(
            "ml-1m",
            "ml-1m",
            ("ml-1m.txt.gz", "ml-1m.txt"),
            "pair-lines",
            "MovieLens 1M, SASRec version (6,040 users, 3,416 items, order only)",
        ),
        DatasetSpec(
            "ml-1m-full",
            "ml-1m",
            ("ratings.dat", "ml-1m-full.txt.gz"),
            "ml-dat",
            "MovieLens 1M, all ratings (6,040 users, 3,706 items)",
        ),
        DatasetSpec(
            "amazon-beauty",
            "amazon-beauty",
            ("Beauty.txt",),
            "user-lines",
            "Amazon Beauty 2014 5-core (S3-Rec), order only",
        ),
        DatasetSpec(
            "amazon-sports",
            "amazon-sports",
            ("Sports_and_Outdoors.txt",),
            "user-lines",
            "Amazon Sports and Outdoors 2014 5-core (S3-Rec), order only",
        ),
        DatasetSpec(
            "amazon-toys",
            "amazon-toys",
            ("Toys_and_Games.txt",),
            "user-lines",
            "Amazon Toys and Games 2014 5-core (S3-Rec), order only",
        ),
        DatasetSpec("yelp", "yelp", ("Yelp.txt",), "user-lines", "Yelp 2019 5-core (S3-Rec), order only"),
        DatasetSpec("lastfm", "lastfm", ("LastFM.txt",), "user-lines", "LastFM (S3-Rec), order only"),
    )
}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dynrec" / "data"


def search_dirs(data_dir: str | Path | None = None) -> list[Path]:
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir))
    env = os.environ.get("DYNREC_DATA_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(cache_dir())
    return dirs


def resolve(name: str, data_dir: str | Path | None = None) -> tuple[DatasetSpec, Path]:
    """The spec and file of dataset `name` (first found in `search_dirs`)."""
    spec = DATASETS.get(name)
    if spec is None:
        raise DatasetNotFoundError(
            f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (or give a file path)"
        )
    for d in search_dirs(data_dir):
        for f in spec.files:
            for cand in (d / spec.folder / f, d / f):
                if cand.exists():
                    return spec, cand
    tried = ", ".join(str(d / spec.folder) for d in search_dirs(data_dir))
    raise DatasetNotFoundError(
        f"dataset {name!r} not found (looked in {tried}). Point DYNREC_DATA_DIR (or --data-dir) at a "
        f"folder holding {spec.folder}/{spec.files[0]}."
    )


def load(name_or_path: str | Path, data_dir: str | Path | None = None, *, strict: bool = False) -> EventLog:
    """Load a registered dataset by name, or any event file by path."""
    p = Path(name_or_path)
    if str(name_or_path) not in DATASETS and p.exists():
        return read_events(p, strict=strict)
    spec, path = resolve(str(name_or_path), data_dir)
    fmt: Format | None = spec.format
    if path.name.endswith(".inter"):
        fmt = "recbole"
    elif path.name.endswith(".txt.gz") or path.name.endswith(".txt"):
        fmt = "pair-lines" if spec.format in ("pair-lines", "ml-dat") else spec.format
    return read_events(path, format=fmt, strict=strict)
