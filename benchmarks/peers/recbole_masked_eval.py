"""Re-evaluate a saved RecBole sequential model on its own test split, with and without masking the
user's already-seen items (RecBole's full-sort evaluation masks nothing for sequential models, while
dynrec and RecBole's general models mask the history). Like for like with dynrec's default protocol.

Runs in the peers venv (RecBole 1.2.1):

    ~/.cache/dynrec-peers/venv/bin/python benchmarks/peers/recbole_masked_eval.py \
        --model-file ~/.cache/dynrec-peers/runs/ml-100k/saved/SASRec-....pth \
        --out benchmarks/peers/results/ml-100k/SASRec-masked.json

The unmasked numbers must equal the ones RecBole reported for the same checkpoint (checked and
printed); "seen" = every interaction of the user except the test target (= train + valid items,
as RecBole's general models mask them).
"""

from __future__ import annotations

import argparse
import json

import torch
from recbole.quick_start import load_data_and_model


def metrics_at_10(scores: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    top = torch.topk(scores, 10, dim=1).indices  # RecBole's ranking: topk (ties by index)
    hit = top == target[:, None]
    found = hit.any(1)
    pos = hit.float().argmax(1)  # 0-based rank where found
    ndcg = torch.where(found, 1.0 / torch.log2(pos.float() + 2.0), torch.zeros_like(pos, dtype=torch.float))
    mrr = torch.where(found, 1.0 / (pos.float() + 1.0), torch.zeros_like(pos, dtype=torch.float))
    return {"hit": float(found.float().sum()), "ndcg": float(ndcg.sum()), "mrr": float(mrr.sum())}


def main() -> None:
    # RecBole 1.2.1 saves checkpoints with pickle and loads them with torch.load's old default;
    # torch >= 2.6 defaults to weights_only=True. The file is one this machine's RecBole run wrote.
    orig_load = torch.load
    torch.load = lambda *a, **k: orig_load(*a, **{**k, "weights_only": False})  # type: ignore[assignment]
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-file", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    config, model, dataset, _train, _valid, test_data = load_data_and_model(model_file=args.model_file)
    model.eval()
    uid, iid = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    users = dataset.inter_feat[uid].numpy()
    items = dataset.inter_feat[iid].numpy()
    n_items = dataset.item_num
    seen = torch.zeros(dataset.user_num, n_items, dtype=torch.bool)
    seen[torch.from_numpy(users), torch.from_numpy(items)] = True
    sums = {
        "unmasked": {"hit": 0.0, "ndcg": 0.0, "mrr": 0.0},
        "masked": {"hit": 0.0, "ndcg": 0.0, "mrr": 0.0},
    }
    n = 0
    with torch.no_grad():
        for batch in test_data:
            interaction = batch[0].to(config["device"])
            scores = model.full_sort_predict(interaction).view(-1, n_items).float().cpu()
            scores[:, 0] = -torch.inf  # padding id (RecBole does the same)
            u = interaction[uid].cpu()
            t = interaction[iid].cpu()
            for k, v in metrics_at_10(scores, t).items():
                sums["unmasked"][k] += v
            m = seen[u].clone()
            m[torch.arange(len(t)), t] = False  # everything the user did except the test target
            for k, v in metrics_at_10(scores.masked_fill(m, -torch.inf), t).items():
                sums["masked"][k] += v
            n += len(t)
    out = {
        "model_file": args.model_file,
        "n_test_users": n,
        "unmasked": {f"{k}@10": round(v / n, 4) for k, v in sums["unmasked"].items()},
        "masked_seen_items": {f"{k}@10": round(v / n, 4) for k, v in sums["masked"].items()},
        "note": "unmasked = RecBole's own sequential full-sort protocol; masked = dynrec's default",
    }
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
