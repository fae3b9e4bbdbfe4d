"""Datasets by name, resolved from an explicit path, ``DYNREC_DATA_DIR`` or the user cache dir.

Resolution order for ``load("ml-100k", data_dir)``: `data_dir` (``--data-dir``), then
``$DYNREC_DATA_DIR``, then ``shared/data`` next to the source checkout dynrec runs from
(``../shared/data`` from the repository root, the folder the Makefile sets ``DYNREC_DATA_DIR`` to,
so the CLI finds the same data inside and outside make), then the cache dir (``$DYNREC_CACHE_DIR``,
else ``$XDG_CACHE_HOME/dynrec/data``, else ``~/.cache/dynrec/data``). In each directory a dataset's
files are looked for in ``<dir>/<folder>/`` and then directly in ``<dir>/``. A dataset found
nowhere names every place looked (`search_places`).

Downloads: only where the publisher serves the data — GroupLens for MovieLens (``ml-100k`` from
``ml-100k.zip``, ``ml-1m-full`` from ``ml-1m.zip``) into the cache dir, checksum checked
(`dynrec.data.download`: never a half-written dataset). ``DYNREC_OFFLINE=1`` (or ``download=False``) never touches
the network.

Note on ml-1m: the name ``ml-1m`` means the SASRec-preprocessed version (3,416 items, order only)
that most sequential-recommendation papers use. GroupLens does not serve it: its ``ml-1m.zip``
holds ``ratings.dat``, which is ``ml-1m-full`` here. So ``ml-1m`` is offline-only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from dynrec.data.download import Download, DownloadError, download_archive
from dynrec.data.events import EventLog
from dynrec.data.io import Format, read_events, read_items
from dynrec.data.items import ItemMetadata
from dynrec.errors import DataError, DatasetNotFoundError

log = logging.getLogger(__name__)

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
# MD5 digests published by GroupLens next to each archive (ml-100k.zip.md5, ml-1m.zip.md5); the
# same values are hard-coded by independent loaders (e.g. sisinflab/DataRec). No SHA-256 is
# published and none could be computed here (machines are offline), so MD5 is what is checked;
# set `Download.sha256` once a digest has been computed from the official archive.
ML_100K_MD5 = "0e33842e24a9c977be4e0107933c0723"
ML_1M_MD5 = "c4d9eecfca2ab87c1945afe126590906"
OFFLINE_HINT = (
    "If this machine is offline, copy the files from a machine that has them and point dynrec at "
    "them: set DYNREC_DATA_DIR=/path/to/data (a folder holding {where}), pass --data-dir "
    "/path/to/data, or give the file path instead of the dataset name."
)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str
    files: tuple[str, ...]  # candidates inside the folder, first found wins
    format: Format
    description: str
    item_files: tuple[str, ...] = ()  # item metadata candidates (titles, genres)
    item_id_map: str | None = None  # "<dataset item id> <metadata item id>" lines, if ids differ
    item_abstracts: str | None = None  # JSON {metadata item id: abstract} (item text)
    item_attributes: str | None = None  # JSON {dataset item id: [attribute id, ...]} (S3-Rec)
    attribute_names: str | None = None  # JSON with "id2attribute" / "attributeid2num" (P5 datamaps)
    download: Download | None = None
    howto: str = ""  # how to obtain the data when there is no download


_S3REC = "RUCAIBox/CIKM2020-S3Rec (data/{file}); see shared/data/{folder}/SOURCE.md"

DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec(
            "ml-100k",
            "ml-100k",
            ("u.data", "ml-100k.inter"),
            "ml-100k",
            "MovieLens 100K ratings with timestamps (943 users, 1,682 items)",
            item_files=("u.item", "ml-100k.item"),
            download=Download(GROUPLENS + "ml-100k.zip", "ml-100k", md5=ML_100K_MD5),
        ),
        DatasetSpec(
            "ml-1m",
            "ml-1m",
            ("ml-1m.txt.gz", "ml-1m.txt"),
            "pair-lines",
            "MovieLens 1M, SASRec version (6,040 users, 3,416 items, order only)",
            item_files=("movies.dat",),
            item_id_map="sas_to_original_items.txt",
            item_abstracts="dbpedia_abstracts.json",
            howto=(
                "ml-1m is the SASRec-preprocessed MovieLens-1M, which GroupLens does not publish, so it "
                "cannot be downloaded: get data/ml-1m.txt from github.com/kang205/SASRec and save it as "
                "ml-1m/ml-1m.txt (or gzipped, ml-1m.txt.gz). The full GroupLens data (ratings.dat, "
                "downloadable) is the dataset 'ml-1m-full'."
            ),
        ),
        DatasetSpec(
            "ml-1m-full",
            "ml-1m",
            ("ratings.dat", "ml-1m-full.txt.gz"),
            "ml-dat",
            "MovieLens 1M, all ratings (6,040 users, 3,706 items)",
            item_files=("movies.dat",),
            item_abstracts="dbpedia_abstracts.json",
            download=Download(GROUPLENS + "ml-1m.zip", "ml-1m", md5=ML_1M_MD5),
        ),
        DatasetSpec(
            "amazon-beauty",
            "amazon-beauty",
            ("Beauty.txt",),
            "user-lines",
            "Amazon Beauty 2014 5-core (S3-Rec), order only",
            item_attributes="Beauty_item2attributes.json",
            attribute_names="datamaps.json",
            howto=_S3REC.format(file="Beauty.txt", folder="amazon-beauty"),
        ),
        DatasetSpec(
            "amazon-sports",
            "amazon-sports",
            ("Sports_and_Outdoors.txt",),
            "user-lines",
            "Amazon Sports and Outdoors 2014 5-core (S3-Rec), order only",
            item_attributes="Sports_and_Outdoors_item2attributes.json",
            attribute_names="datamaps.json",
            howto=_S3REC.format(file="Sports_and_Outdoors.txt", folder="amazon-sports"),
        ),
        DatasetSpec(
            "amazon-toys",
            "amazon-toys",
            ("Toys_and_Games.txt",),
            "user-lines",
            "Amazon Toys and Games 2014 5-core (S3-Rec), order only",
            item_attributes="Toys_and_Games_item2attributes.json",
            attribute_names="datamaps.json",
            howto=_S3REC.format(file="Toys_and_Games.txt", folder="amazon-toys"),
        ),
        DatasetSpec(
            "yelp",
            "yelp",
            ("Yelp.txt",),
            "user-lines",
            "Yelp 2019 5-core (S3-Rec), order only",
            item_attributes="Yelp_item2attributes.json",
            attribute_names="datamaps.json",
            howto=_S3REC.format(file="Yelp.txt", folder="yelp"),
        ),
        DatasetSpec(
            "lastfm",
            "lastfm",
            ("LastFM.txt",),
            "user-lines",
            "LastFM (S3-Rec), order only",
            item_attributes="LastFM_item2attributes.json",
            attribute_names="datamaps.json",
            howto=_S3REC.format(file="LastFM.txt", folder="lastfm"),
        ),
    )
}


def cache_dir() -> Path:
    """Where downloads go: ``$DYNREC_CACHE_DIR``, else ``$XDG_CACHE_HOME/dynrec/data``, else
    ``~/.cache/dynrec/data``."""
    explicit = os.environ.get("DYNREC_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dynrec" / "data"


def checkout_data_dir() -> Path | None:
    """``shared/data`` next to the source checkout this package runs from (``../shared/data`` from
    the repository root) when dynrec runs from a checkout (``src/dynrec`` under a folder with
    ``pyproject.toml``) and that folder exists; None for an installed package."""
    root = Path(__file__).resolve().parents[3]
    if not ((root / "pyproject.toml").is_file() and (root / "src" / "dynrec").is_dir()):
        return None
    shared = root.parent / "shared" / "data"
    return shared if shared.is_dir() else None


def search_places(data_dir: str | Path | None = None) -> list[tuple[str, Path]]:
    """(where it comes from, directory) of every directory datasets are looked for in, in order
    (see the module docstring); a directory named twice is searched once, under its first name."""
    places: list[tuple[str, Path]] = []
    if data_dir is not None:
        places.append(("--data-dir", Path(data_dir)))
    env = os.environ.get("DYNREC_DATA_DIR")
    if env:
        places.append(("DYNREC_DATA_DIR", Path(env)))
    shared = checkout_data_dir()
    if shared is not None:
        places.append(("shared/data next to the checkout", shared))
    places.append(("cache", cache_dir()))
    seen: set[Path] = set()
    out = []
    for label, d in places:
        key = d.expanduser().resolve()
        if key not in seen:
            seen.add(key)
            out.append((label, d))
    return out


def search_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """The directories of `search_places`, in search order."""
    return [d for _, d in search_places(data_dir)]


def offline() -> bool:
    return os.environ.get("DYNREC_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def spec(name: str) -> DatasetSpec:
    found = DATASETS.get(name)
    if found is None:
        raise DatasetNotFoundError(
            f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (or give a file path)"
        )
    return found


def _find(spec_: DatasetSpec, files: tuple[str, ...], data_dir: str | Path | None) -> Path | None:
    for d in search_dirs(data_dir):
        for f in files:
            for cand in (d / spec_.folder / f, d / f):
                if cand.is_file():
                    return cand
    return None


def looked_in(folder: str, data_dir: str | Path | None) -> str:
    """Every place `_find` looks for a dataset's files, for messages: ``label dir/folder`` each,
    and a note when ``DYNREC_DATA_DIR`` is not set."""
    tried = "; ".join(f"{label} {d / folder} (and {d})" for label, d in search_places(data_dir))
    unset = "" if os.environ.get("DYNREC_DATA_DIR") else "; DYNREC_DATA_DIR is not set"
    return tried + unset


def _not_found(spec_: DatasetSpec, data_dir: str | Path | None, why: str = "") -> DatasetNotFoundError:
    where = f"{spec_.folder}/{spec_.files[0]}"
    parts = [
        f"dataset {spec_.name!r} not found: looked for {' or '.join(spec_.files)} in "
        f"{looked_in(spec_.folder, data_dir)}."
    ]
    if why:
        parts.append(why)
    if spec_.howto:
        parts.append(spec_.howto)
    parts.append(OFFLINE_HINT.format(where=where))
    return DatasetNotFoundError(" ".join(parts))


def resolve(
    name: str, data_dir: str | Path | None = None, *, download: bool | None = None
) -> tuple[DatasetSpec, Path]:
    """The spec and event file of dataset `name`: the first found in `search_dirs`, else (when the
    publisher serves it, `download` is not False and ``DYNREC_OFFLINE`` is unset) downloaded into
    the cache dir. Raises `DatasetNotFoundError` saying how to point at a local copy."""
    s = spec(name)
    path = _find(s, s.files, data_dir)
    if path is not None:
        return s, path
    allowed = (not offline()) if download is None else download
    if s.download is None:
        raise _not_found(s, data_dir)
    if not allowed:
        raise _not_found(
            s,
            data_dir,
            f"Its publisher serves it ({s.download.url}) but this is offline mode (DYNREC_OFFLINE is set "
            "or download=False), so it was not downloaded; without it dynrec downloads it into the cache.",
        )
    log.warning(
        "dataset %s not found (looked in %s); downloading it from its publisher into %s",
        name,
        looked_in(s.folder, data_dir),
        cache_dir(),
    )
    try:
        fetch(name)
    except DownloadError as exc:
        raise _not_found(s, data_dir, f"Downloading it failed: {exc}.") from exc
    path = _find(s, s.files, data_dir)
    if path is None:  # pragma: no cover - the archive lacked the file; fetch checks this
        raise _not_found(s, data_dir, "The downloaded archive did not contain it.")
    return s, path


def _format_for(s: DatasetSpec, path: Path) -> Format:
    name = path.name.lower()
    if name.endswith(".inter"):
        return "recbole"
    if name.endswith((".txt", ".txt.gz")):
        return "pair-lines" if s.format in ("pair-lines", "ml-dat") else s.format
    return s.format


def load(
    name_or_path: str | Path,
    data_dir: str | Path | None = None,
    *,
    strict: bool = False,
    download: bool | None = None,
) -> EventLog:
    """Load a registered dataset by name, or any event file by path (format from its name)."""
    p = Path(name_or_path)
    if str(name_or_path) not in DATASETS:
        if p.exists():
            return read_events(p, strict=strict)
        if p.suffix or os.sep in str(name_or_path):
            raise DataError("no such file (and not a dataset name)", source=str(p))
    s, path = resolve(str(name_or_path), data_dir, download=download)
    return read_events(path, format=_format_for(s, path), strict=strict)


def load_items(
    name_or_path: str | Path, data_dir: str | Path | None = None, *, strict: bool = False
) -> ItemMetadata:
    """Item metadata (titles, genres) of a registered dataset, keyed by the dataset's item ids
    (for ``ml-1m`` the SASRec ids, through ``sas_to_original_items.txt``), or of an item file."""
    p = Path(name_or_path)
    if str(name_or_path) not in DATASETS and p.exists():
        return read_items(p, strict=strict)
    s = spec(str(name_or_path))
    if not s.item_files:
        raise DatasetNotFoundError(f"dataset {s.name!r} has no item metadata (titles/genres) in dynrec")
    path = _find(s, s.item_files, data_dir)
    if path is None:
        raise DatasetNotFoundError(
            f"item metadata of {s.name!r} not found: looked for {' or '.join(s.item_files)} in "
            f"{looked_in(s.folder, data_dir)}."
        )
    items = read_items(path, strict=strict)
    mapping = item_id_map(s.name, data_dir)
    return items if mapping is None else items.rekey(mapping)


def find_file(name: str, filename: str, data_dir: str | Path | None = None) -> Path | None:
    """Path of a side file (item metadata, id map, item text) of dataset `name`, looked for like
    its event file (`search_dirs`, ``<dir>/<folder>/`` then ``<dir>/``); None when absent."""
    return _find(spec(name), (filename,), data_dir)


def item_id_map(name: str, data_dir: str | Path | None = None) -> dict[str, str] | None:
    """*dataset item id -> metadata item id* for datasets whose item ids differ from their metadata
    files' (``ml-1m``: SASRec ids -> MovieLens ids); None when the ids are the same."""
    s = spec(name)
    if s.item_id_map is None:
        return None
    map_path = _find(s, (s.item_id_map,), data_dir)
    if map_path is None:
        raise DatasetNotFoundError(
            f"{s.name!r} item ids differ from its metadata files'; the map {s.item_id_map} was not "
            f"found: looked in {looked_in(s.folder, data_dir)}"
        )
    pairs = read_events(map_path, format="pair-lines", strict=True).frame
    return dict(zip(pairs["user_id"].to_list(), pairs["item_id"].to_list(), strict=True))


def fetch(
    name: str,
    *,
    dest: str | Path | None = None,
    url: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download dataset `name` from its publisher into ``dest/<folder>`` (default: `cache_dir`).

    The archive must match the spec's checksum(s) — else `ChecksumError` and nothing is
    extracted. `url` overrides the publisher URL (mirrors, tests). Returns the dataset folder.
    """
    s = spec(name)
    if s.download is None:
        raise DownloadError(f"{name!r} has no download. {s.howto}".strip())
    dl = s.download
    src = url or dl.url
    root = Path(dest) if dest is not None else cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    return download_archive(dl, s.folder, s.files, root, src, timeout)
