"""Rebuild benchmarks/README.md from the per-question result pages (results_*.md, results/*.md).

Each benchmark script writes its own JSON + markdown; this stitches them into one page so the
numbers are never retyped by hand.  python benchmarks/build_readme.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

INTRO = """# dynrec benchmarks

One script per question; each writes JSON under `results/` and a markdown page that this README
stitches together (`python benchmarks/build_readme.py`). Machine: 2 CPU cores (x86_64), no GPU,
**shared with other jobs while these were measured** (load average often 6-15), so wall times are
noisy upper bounds: read medians and same-run ratios. Rows marked H100 ran on a lent GPU machine.

Protocol for every quality number: temporal leave-one-out (ties in time keep file order), full
ranking over the whole catalogue, already-seen items excluded, model selection on the validation
targets only. Peers (RecBole, implicit) were run on this machine on the same split:
[peers/README.md](peers/README.md).

| question | script | page |
|---|---|---|
| load + prepare + split speed | `data_speed.py` | below |
| full-ranking evaluation speed | `eval_speed.py` | below |
| quality of every model | `quality.py`, `seq_transformers.py`, `gru_caser_mlp.py` | below |
| training speed vs sgemm peak | `train_speed.py`, `sasrec_step_speed.py` | below |
| streaming replay, four modes | `replay.py` (+ `replay_gpu.sh`) | below |
| state update + top-10 latency | `state_latency.py`, `sasrec_state_latency.py` | below |
| peers on the same split | `peers/run_peers.sh` | [peers/README.md](peers/README.md) |
"""

SECTIONS = [
    (None, "results_summary.md"),
    ("Full-ranking evaluation speed (`eval_speed.py`)", "results/eval_speed.md"),
    (None, "results_data_speed.md"),
    (
        "Quality of every model, default configs (`quality.py`; `fit_s` of the CPU mf, bpr and neural "
        "rows was measured niced next to other jobs, the H100 rows with 10-17 benchmark processes "
        "sharing the GPU: read speed on the per-model pages)",
        "results/quality.md",
    ),
    (None, "results_mf.md"),
    (None, "results_sasrec.md"),
    (None, "results_selection.md"),
    (None, "results_gru_caser_mlp.md"),
    ("Training speed (`train_speed.py`)", "results/train_speed_ml-1m.md"),
    (None, "results_replay.md"),
    (None, "results_state_latency.md"),
]


def demote(md: str) -> str:
    """Shift headings one level down so each page nests under this README."""
    return "\n".join(("#" + line) if line.startswith("#") else line for line in md.splitlines())


def main() -> None:
    parts = [INTRO]
    for title, rel in SECTIONS:
        p = HERE / rel
        if not p.exists():
            continue
        body = p.read_text().strip()
        if title:
            parts.append(f"## {title}\n\n{body}")
        else:
            parts.append(demote(body))
    (HERE / "README.md").write_text("\n\n".join(parts) + "\n")
    print(f"wrote {HERE / 'README.md'}")


if __name__ == "__main__":
    main()
