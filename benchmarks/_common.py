"""The results store every runner writes to, and the record they all share.

One JSON file per question, ``benchmarks/results/<question>.json``::

    {"question": "quality", "records": [RECORD, ...]}

and every RECORD has the same shape::

    {"question": "quality",
     "key": "ml-100k/sasrec/seed=42",          # unique within the question; a rerun replaces it
     "params": {...},                          # what was measured (dataset, model, seed, overrides, ...)
     "metrics": {...},                         # what came out (numbers, or small nested tables)
     "machine": {"cpu": ..., "cpus": ..., "device": ...},
     "commit": "<dynrec git commit>", "date": "YYYY-MM-DD",
     "command": "python -m benchmarks.quality --datasets ml-100k --models sasrec --seed 42",
     "note": "..."}                            # optional

``benchmarks/pages.py`` renders every page from these files; nothing else writes a page. This module
imports only the standard library so that the page generator stays light.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = Path(os.environ.get("DYNREC_BENCH_RESULTS", HERE / "results"))  # a scratch store for trials
QUESTIONS = (
    "quality",
    "speed",
    "replay",
    "latency",
    "peers",
    "serve",
    "text",
    "ann",
    "quantize",
    "convergence",
    "scale",
    "shifts",
    "consume",
    "capacity",
)
Record = dict[str, Any]


BF16_FLAGS = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}
"""CPU flags (``/proc/cpuinfo``) that decide whether ``amp=auto`` trains in bfloat16, so that two
machines reporting the same model name but training differently are told apart."""


def cpu_name() -> str:
    """The CPU model as the OS reports it (``/proc/cpuinfo`` on Linux), with its bfloat16 units
    when it has any (e.g. ``AMD EPYC with AVX512-BF16``): they change what a bf16-capable model
    trains, hence its numbers."""
    with contextlib.suppress(OSError):
        name, flags = "", set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
        if name:
            units = [label for flag, label in BF16_FLAGS.items() if flag in flags]
            return name + (f" with {', '.join(units)}" if units else "")
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict[str, Any]:
    return {"cpu": cpu_name(), "cpus": os.cpu_count(), "device": device}


def git_commit() -> str:
    """HEAD of the repository, with ``+dirty`` when tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO, capture_output=True).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def record(
    question: str,
    key: str,
    params: dict[str, Any],
    metrics: dict[str, Any],
    command: str,
    *,
    device: str = "cpu",
    note: str = "",
) -> Record:
    if question not in QUESTIONS:
        raise ValueError(f"unknown question {question!r}; one of {QUESTIONS}")
    rec: Record = {
        "question": question,
        "key": key,
        "params": params,
        "metrics": metrics,
        "machine": machine(device),
        "commit": git_commit(),
        "date": dt.date.today().isoformat(),
        "command": command,
    }
    if note:
        rec["note"] = note
    return rec


def store_path(question: str) -> Path:
    return RESULTS / f"{question}.json"


def load(question: str) -> list[Record]:
    path = store_path(question)
    return list(json.loads(path.read_text())["records"]) if path.exists() else []


@contextlib.contextmanager
def _locked(question: str) -> Iterator[None]:
    """Several runner processes may write one store at once: merge under a lock, never overwrite."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f".{question}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def save(question: str, records: list[Record]) -> None:
    records = sorted(records, key=lambda r: str(r["key"]))
    text = json.dumps({"question": question, "records": records}, indent=1, sort_keys=True, default=_plain)
    store_path(question).write_text(text + "\n")


def put(rec: Record) -> None:
    """Add a record to its question's store, replacing one with the same key."""
    question = str(rec["question"])
    with _locked(question):
        records = [r for r in load(question) if r["key"] != rec["key"]]
        save(question, [*records, rec])


def _plain(value: Any) -> Any:
    """numpy scalars and similar: stored as plain numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def parse_sets(items: list[str]) -> dict[str, dict[str, str]]:
    """``--set MODEL.key=value`` options -> {model: {key: value}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        target, value = item.split("=", 1)
        model, key = target.split(".", 1)
        out.setdefault(model, {})[key] = value
    return out


def set_args(overrides: dict[str, str], model: str) -> str:
    return "".join(f" --set {model}.{k}={v}" for k, v in sorted(overrides.items()))


def fmt(v: Any) -> str:
    """A number as the pages show it (thousands separators, 4 decimals below 10); None, "" and NaN as a dash."""
    if v is None or v == "":
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:  # NaN
            return "–"
        a = abs(v)
        return f"{v:.4f}" if a < 10 else f"{v:,.1f}" if a < 1000 else f"{v:,.0f}"
    return str(v)


def table(header: list[str], rows: Iterable[list[Any]]) -> str:
    """A markdown table, every cell through `fmt`."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
