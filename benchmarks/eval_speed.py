"""How fast is full-ranking evaluation? users/s for Pop, ItemKNN, UserKNN on ml-100k and ml-1m.

Every test user is ranked against the whole catalogue (seen items masked). Median of repeated runs;
the machine is shared and noisy, so compare ratios measured in the same run.

    python benchmarks/eval_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse

from _common import markdown_table, median_time, write_json

from dynrec.evaluation.offline import evaluate
from dynrec.models.base import create_model
from dynrec.pipeline import prepare


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--datasets", default="ml-100k,ml-1m")
    ap.add_argument("--models", default="pop,itemknn,userknn")
    args = ap.parse_args()
    rows = []
    for ds in args.datasets.split(","):
        p = prepare(ds)
        for name in args.models.split(","):
            m = create_model(name).fit(p.split.train)
            med, times = median_time(lambda m=m, p=p: evaluate(m, p.split.test, extra=False), args.repeats)
            n = len(p.split.test)
            rows.append(
                {
                    "dataset": ds,
                    "model": name,
                    "users": n,
                    "median_s": med,
                    "users_per_s": n / med,
                    "all_s": [round(t, 3) for t in times],
                }
            )
            print(rows[-1])
    write_json("eval_speed", {"rows": rows})
    table = markdown_table(rows, ["dataset", "model", "users", "median_s", "users_per_s"])
    (__import__("pathlib").Path(__file__).parent / "results" / "eval_speed.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
