"""Where MIND's exclude_history stops paying: the evidence for repeats.REPEAT_SHARE_THRESHOLD.

ml-100k has no repeats. For each share p, a copy of it has every behaviour after a user's first
replaced, with probability p, by one of the user's previous (at most 50) items drawn uniformly: a
re-consumption. MIND (defaults, learning rate 0.003, RecBole's leave-one-out protocol, 20 epochs)
is trained on each copy with exclude_history True and False; the table gives the measured repeat
share of the training rows (what ``auto`` looks at) beside the test figures of both.

Usage (from the project root; ~1.5 min a run on one core):
    python -m bench.exclude_history_threshold --shares 0,0.025,0.05,0.1,0.2 --out results/repeats/threshold
"""

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

HISTORY = 50  # MAX_ITEM_LIST_LENGTH: a repeat the model can see in its input


def with_repeats(inter, share, seed=0):
    """A copy of the (user_id, item_id, timestamp) frame with each behaviour after a user's first
    replaced, with probability ``share``, by one of the user's previous items (original
    sequence, at most HISTORY back), drawn uniformly."""
    rng = np.random.default_rng(seed)
    frame = inter.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    position = frame.groupby("user_id").cumcount().to_numpy()
    items = frame["item_id"].to_numpy()
    back = 1 + np.floor(rng.random(len(frame)) * np.minimum(position, HISTORY)).astype(np.int64)
    replace = (position > 0) & (rng.random(len(frame)) < share)
    source = np.arange(len(frame)) - back
    frame["item_id"] = np.where(replace, items[np.maximum(source, 0)], items)
    return frame


def write_dataset(frame, root, name):
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.inter", "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        frame[["user_id", "item_id", "timestamp"]].to_csv(f, sep="\t", header=False, index=False)


def measure(shares, epochs, threads):
    import pandas as pd
    import recbole
    import torch

    from recbole_mind.train import run

    torch.set_num_threads(threads)
    source = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
    inter = pd.read_csv(source, sep="\t", usecols=[0, 1, 3], dtype=str)
    inter.columns = ["user_id", "item_id", "timestamp"]
    inter["timestamp"] = inter["timestamp"].astype(float)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for share in shares:
            name = f"ml-100k-repeats{share:g}"
            write_dataset(with_repeats(inter, share), root, name)
            row = {"injected_share": share}
            for setting in (True, False):
                result = run("MIND", name, config_dict={
                    "data_path": root, "learning_rate": 0.003, "epochs": epochs, "exclude_history": setting,
                    "checkpoint_dir": os.path.join(root, "saved"), "show_progress": False, "state": "WARNING"},
                    saved=False)
                row["repeat_share"] = result["exclude_history"]["repeat_share"]
                row["on" if setting else "off"] = {k: result["test_result"][k] for k in ("ndcg@10", "recall@50")}
                print(f"p={share:g} exclude_history={setting}: {row['on' if setting else 'off']}", flush=True)
            rows.append(row)
    return rows


def markdown(rows, command):
    lines = [
        "# exclude_history on and off as repeats grow (MIND, ml-100k with injected repeats)", "",
        f"Command: `{command}`", "",
        "Each behaviour after a user's first replaced, with probability p, by one of the user's previous "
        "(at most 50) items; MIND's defaults, learning rate 0.003, RecBole's leave-one-out protocol, 20 epochs, "
        "test set. The repeat share is that of the training rows (a row's label among its own input "
        "items), what `exclude_history: auto` measures.", "",
        "| p | repeat share | NDCG@10 on | NDCG@10 off | Recall@50 on | Recall@50 off | better |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        better = "on" if r["on"]["ndcg@10"] > r["off"]["ndcg@10"] else "off"
        lines.append(f"| {r['injected_share']:g} | {r['repeat_share']:.3f} | {r['on']['ndcg@10']:.4f} | "
                     f"{r['off']['ndcg@10']:.4f} | {r['on']['recall@50']:.4f} | {r['off']['recall@50']:.4f} | {better} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", default="0,0.025,0.05,0.1,0.2")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/repeats/threshold")
    args = parser.parse_args()
    shares = [float(s) for s in args.shares.split(",")]
    rows = measure(shares, args.epochs, args.threads)
    command = (f"python -m bench.exclude_history_threshold --shares {args.shares} --epochs {args.epochs} "
               f"--out {args.out}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(rows, command))
    print(markdown(rows, command))


if __name__ == "__main__":
    main()
