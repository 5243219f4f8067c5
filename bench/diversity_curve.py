"""Recall@N against Diversity@N as diversity_lambda grows, for trained checkpoints under the
multi-target protocol (ComiRec's controllable aggregation, recbole_mind/diversify.py).

Each checkpoint is restored with its own settings (its user split included), and its test users
are evaluated once per lambda through RecBole's Trainer, the lists re-ranked greedily.

Usage (from the project root):
    python -m bench.diversity_curve --checkpoint saved/compare/ml-100k/MIND_lr0.003_split1/MIND-....pth \
        --lambdas 0,0.05,0.1,0.25 --out results/multi_target/diversity_ml-100k
"""

import argparse
import json

import numpy as np

from bench.tool_errors import user_errors_exit_2
from recbole_mind.errors import UserError


def curve(path, lambdas, threads=1):
    """{lambda: test metrics} of the checkpoint at ``path``."""
    import torch

    from recbole_mind import multi_target
    from recbole_mind.checkpoint import restore
    from recbole_mind.diversify import diversified
    from recbole_mind.trainer import plugin_trainer

    torch.set_num_threads(threads)
    restored = restore(path, purpose="the diversity curve")
    config = restored.config
    if config["eval_protocol"] != multi_target.NAME:
        raise UserError(f"{path} was not trained under the multi_target protocol")
    labels, described = multi_target.categories(config, restored.dataset, restored.train_data)
    trainer = plugin_trainer(config, restored.model)
    trainer.eval_collector.data_collect(restored.train_data)
    n = max(config["topk"])
    out = {}
    for lam in lambdas:
        with diversified(restored.model, labels, lam, n, exclude=restored.test_data.input_items):
            result = {k: float(v) for k, v in trainer.evaluate(restored.test_data, load_best_model=False).items()}
            result.update(multi_target.list_metrics(restored.model, restored.test_data, labels, config["topk"]))
        out[lam] = result
        print(f"lambda {lam:g}: " + "  ".join(f"{k} {v:.4f}" for k, v in result.items() if k.endswith(f"@{n}")))
    return out, described, n


def write(results, described, n, out, command):
    """<out>.json, .md and .png: the mean over the checkpoints at each lambda."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lambdas = sorted(next(iter(results.values())))
    keys = list(next(iter(next(iter(results.values())).values())))
    mean = {lam: {k: float(np.mean([r[lam][k] for r in results.values()])) for k in keys} for lam in lambdas}
    with open(out + ".json", "w") as f:
        json.dump({"command": command, "categories": described, "checkpoints": list(results),
                   "lambdas": {f"{lam:g}": mean[lam] for lam in lambdas},
                   "per_checkpoint": {p: {f"{lam:g}": r[lam] for lam in lambdas} for p, r in results.items()}},
                  f, indent=2)
    rows = [f"| {lam:g} | {mean[lam][f'recall@{n}']:.4f} | {mean[lam][f'ndcg@{n}']:.4f} | "
            f"{mean[lam][f'hit@{n}']:.4f} | {mean[lam][f'diversity@{n}']:.4f} | {mean[lam][f'itemcoverage@{n}']:.4f} |"
            for lam in lambdas]
    with open(out + ".md", "w") as f:
        f.write("\n".join([
            "# Controllable diversity under the multi-target protocol", "",
            f"Command: `{command}`", "",
            f"ComiRec's greedy aggregation of each test user's merged per-interest candidates: the next "
            f"item maximises score - lambda x (items already picked that share a category); categories: "
            f"{described}. Mean over {len(results)} checkpoint(s) (one per user split).", "",
            f"| lambda | Recall@{n} | NDCG@{n} | Hit@{n} | Diversity@{n} | Coverage@{n} |",
            "|---|---|---|---|---|---|", *rows, "",
            f"![Recall@{n} against Diversity@{n}]({out.rsplit('/', 1)[-1]}.png)", ""]))
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([mean[lam][f"diversity@{n}"] for lam in lambdas], [mean[lam][f"recall@{n}"] for lam in lambdas], "o-")
    for lam in lambdas:
        ax.annotate(f"λ={lam:g}", (mean[lam][f"diversity@{n}"], mean[lam][f"recall@{n}"]), fontsize=8)
    ax.set(xlabel=f"Diversity@{n}", ylabel=f"Recall@{n}", title="diversity_lambda: accuracy against diversity")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out + ".png", dpi=120)
    plt.close(fig)


@user_errors_exit_2
def main():
    import sys

    parser = argparse.ArgumentParser(prog="python -m bench.diversity_curve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", required=True)
    parser.add_argument("--lambdas", default="0,0.05,0.1,0.25")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="path without suffix for the .json, .md and .png")
    args = parser.parse_args()
    lambdas = [float(v) for v in args.lambdas.split(",")]
    results, described, n = {}, None, None
    for path in args.checkpoint:
        results[path], described, n = curve(path, lambdas, args.threads)
    write(results, described, n, args.out, "python -m bench.diversity_curve " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
