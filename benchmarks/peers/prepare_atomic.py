#!/usr/bin/env python
"""Write RecBole atomic interaction files for the order-only datasets.

The peer scripts here (RecBole 1.2.1, implicit 0.7.3) read
``DIR/NAME/NAME.inter``: tab-separated, header
``user_id:token<TAB>item_id:token<TAB>timestamp:float``.  The order-only
datasets have no timestamps, so the within-user position 0, 1, 2, ... is
written as the timestamp.  Positions are unique inside a user, so a
time-ordered leave-one-out split (RecBole ``order: TO``) reproduces the file
order exactly: last item = test, second-to-last = valid.

Datasets (sources under ``shared/data``; ``--data-dir`` or ``$DYNREC_DATA_DIR``):

* ``ml-1m``: ``ml-1m/ml-1m.txt.gz`` (SASRec version), lines ``user item``,
  grouped by user, chronological within the user.
* ``amazon-beauty``: ``amazon-beauty/Beauty.txt`` (S3-Rec version), lines
  ``user item1 item2 ...`` in chronological order.

ml-100k needs no conversion: ``shared/data/ml-100k/ml-100k.inter`` is already
a RecBole atomic file (with rating and Unix timestamp).  But RecBole sorts it
by a min-max-normalised *float32* timestamp (``ml-100k.yaml`` sets
``normalize_all: True``; float32 resolution there is ~1.1 s), so a few
near-equal timestamps collapse into ties that keep file order.  The optional
dataset

* ``ml-100k-pos``: ``ml-100k/ml-100k.inter`` re-ordered by (user, exact
  integer timestamp, file row) -- equal timestamps keep file order, as in
  dynrec's loader -- with the within-user position as the timestamp.

lets RecBole reproduce that exact-timestamp split (the rating column is
dropped: every interaction is an implicit positive in these runs anyway).

The output goes to a scratch directory (default
``~/.cache/dynrec-peers/data``).  Dataset terms forbid redistribution: never
point ``--out`` into the repository.

Usage::

    python benchmarks/peers/prepare_atomic.py [--out DIR] [--data-dir DIR] [DATASET ...]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"
DEFAULT_OUT = Path.home() / ".cache" / "dynrec-peers" / "data"
REPO_ROOT = Path(__file__).resolve().parents[2]


def default_data_dir() -> Path:
    env = os.environ.get("DYNREC_DATA_DIR")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "data"


def read_ml1m(path: Path) -> Iterator[tuple[str, list[str]]]:
    """Yield (user, items in order) from SASRec-style ``user item`` lines."""
    cur_user: str | None = None
    items: list[str] = []
    seen_users: set[str] = set()
    with gzip.open(path, "rt", encoding="ascii") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected 'user item', got {line!r}")
            user, item = parts
            if user != cur_user:
                if cur_user is not None:
                    yield cur_user, items
                if user in seen_users:
                    raise ValueError(f"{path}:{lineno}: user {user} is not contiguous")
                seen_users.add(user)
                cur_user, items = user, []
            items.append(item)
    if cur_user is not None:
        yield cur_user, items


def read_s3rec(path: Path) -> Iterator[tuple[str, list[str]]]:
    """Yield (user, items in order) from S3-Rec-style ``user item1 item2 ...`` lines."""
    seen_users: set[str] = set()
    with open(path, encoding="ascii") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            user, items = parts[0], parts[1:]
            if user in seen_users:
                raise ValueError(f"{path}:{lineno}: duplicate user {user}")
            seen_users.add(user)
            yield user, items


def read_recbole_inter(path: Path) -> Iterator[tuple[str, list[str]]]:
    """Yield (user, items ordered by exact timestamp, ties by file row) from a RecBole .inter."""
    rows: dict[str, list[tuple[int, int, str]]] = {}
    with open(path, encoding="ascii") as f:
        header = f.readline().rstrip("\n").split("\t")
        names = [h.split(":")[0] for h in header]
        iu, ii, it = names.index("user_id"), names.index("item_id"), names.index("timestamp")
        for row, line in enumerate(f):
            parts = line.rstrip("\n").split("\t")
            rows.setdefault(parts[iu], []).append((int(float(parts[it])), row, parts[ii]))
    for user in sorted(rows, key=int):
        yield user, [item for _, _, item in sorted(rows[user])]


DATASETS = {
    "ml-1m": (Path("ml-1m") / "ml-1m.txt.gz", read_ml1m),
    "amazon-beauty": (Path("amazon-beauty") / "Beauty.txt", read_s3rec),
    "ml-100k-pos": (Path("ml-100k") / "ml-100k.inter", read_recbole_inter),
}


def write_atomic(name: str, data_dir: Path, out_dir: Path) -> dict[str, object]:
    rel, reader = DATASETS[name]
    src = data_dir / rel
    dest_dir = out_dir / name
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{name}.inter"
    tmp = dest.with_suffix(".inter.tmp")
    n_users = n_inter = n_repeat = 0
    items_seen: set[str] = set()
    min_len = None
    max_len = 0
    with open(tmp, "w", encoding="ascii", newline="\n") as out:
        out.write(HEADER)
        for user, items in reader(src):
            n_users += 1
            n_inter += len(items)
            n_repeat += len(items) - len(set(items))
            items_seen.update(items)
            min_len = len(items) if min_len is None else min(min_len, len(items))
            max_len = max(max_len, len(items))
            out.writelines(f"{user}\t{item}\t{pos}\n" for pos, item in enumerate(items))
    tmp.replace(dest)
    return {
        "dataset": name,
        "source": str(src),
        "inter": str(dest),
        "users": n_users,
        "items": len(items_seen),
        "interactions": n_inter,
        "repeat_user_item_pairs": n_repeat,
        "min_seq_len": min_len,
        "max_seq_len": max_len,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("datasets", nargs="*", metavar="DATASET", help=f"default: all of {list(DATASETS)}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="scratch dir (not the repo)")
    p.add_argument("--data-dir", type=Path, default=None, help="shared/data folder")
    args = p.parse_args(argv)

    out_dir = args.out.expanduser().resolve()
    if out_dir == REPO_ROOT or REPO_ROOT in out_dir.parents:
        p.error(f"--out {out_dir} is inside the repository; dataset terms forbid that")
    names = args.datasets or list(DATASETS)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        p.error(f"unknown dataset(s) {unknown}; choose from {list(DATASETS)}")
    data_dir = (args.data_dir or default_data_dir()).expanduser()
    for name in names:
        print(json.dumps(write_atomic(name, data_dir, out_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
