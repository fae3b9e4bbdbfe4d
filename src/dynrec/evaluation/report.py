"""Reports of streaming replays: a markdown table and PNG plots of a metric over the stream.

Plots use matplotlib (the ``plots`` extra) with its non-interactive Agg backend (no display needed),
both imported and selected at call time — nothing is decided at import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dynrec.errors import requires_extra

__all__ = ["markdown_table", "plot_windows", "require_plots"]


def require_plots() -> None:
    """`MissingExtraError` now when the 'plots' extra is missing (before a long run that plots)."""
    with requires_extra("plots", "plotting (replay --plot)"):
        import matplotlib  # noqa: F401


def plot_windows(
    results: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    metric: str = "NDCG@10",
    title: str = "",
    label_key: str = "mode",
    reference: float | None = None,
    reference_label: str = "oracle",
) -> Path:
    """One line per result (its ``windows``: ``start``, ``end``, `metric`) against the stream
    position; an optional horizontal `reference` line (e.g. the oracle). Writes a small PNG."""
    with requires_extra("plots", "plotting (replay --plot)"):
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=90)
    try:
        for res in results:
            wins = res.get("windows", [])
            if not wins:
                continue
            x = [0.5 * (float(w["start"]) + float(w["end"])) for w in wins]
            y = [float(w[metric]) for w in wins]
            ax.plot(x, y, marker="o", markersize=3, linewidth=1.5, label=str(res.get(label_key, "")))
        if reference is not None:
            ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label=reference_label)
        ax.set_xlabel("replayed events")
        ax.set_ylabel(metric)
        if title:
            ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A markdown table of `rows` with `columns` = (key, header); floats get 4 significant places
    (integers-valued floats print as integers)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # NaN
                return "–"
            if v.is_integer() and abs(v) >= 1:
                return f"{int(v)}"
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
        return "–" if v is None else str(v)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])
