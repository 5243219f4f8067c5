"""Is one model's lead more than the held-out users it was measured on? A paired bootstrap of the
per-user difference in Recall@N under the multi-target protocol.

Each ``--checkpoint LABEL=PATH`` is one model trained on one user split (read from the
checkpoint's settings); a label repeats once per split, and every label must be given on every
split. Each held-out test user's Recall@N is computed with every model
(``bench.bucket_eval.multi_target_recalls``: the user's input removed from the ranking, as the
protocol does), so the per-split means are the runs' own test figures. The users of all splits
are pooled, and for each pair of labels the table gives the mean difference, its 95% interval
from a bootstrap that redraws users within each split (seeded), and how many users each model
serves better. An interval that holds 0 says the users measured cannot order the two models.

Usage (from the project root; the comparison's checkpoints of two splits):
    python -m bench.paired_users \
        --checkpoint MIND=saved/compare/ml-100k/MIND_lr0.003_split4/MIND-....pth \
        --checkpoint GRU4Rec=saved/compare/ml-100k/GRU4Rec_lr0.003_split4/GRU4Rec-....pth \
        --checkpoint MIND=saved/compare/ml-100k/MIND_lr0.003_split5/MIND-....pth \
        --checkpoint GRU4Rec=saved/compare/ml-100k/GRU4Rec_lr0.003_split5/GRU4Rec-....pth
"""

import argparse
import itertools

import numpy as np

from bench.bucket_eval import checkpoint_specs, load, multi_target_recalls
from bench.tool_errors import user_errors_exit_2
from recbole_mind.errors import UserError


def paired_bootstrap(a, b, groups, draws=10000, seed=0):
    """(mean of a - b, 2.5th and 97.5th percentiles of that mean over ``draws`` resamples of the
    rows, each resample drawing within every group as many rows as the group holds)."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    totals = np.zeros(draws)
    for group in np.unique(groups):  # a few splits: the loop is over groups, not users
        members = diff[groups == group]
        picks = rng.integers(0, len(members), size=(draws, len(members)))
        totals += members[picks].sum(axis=1)
    means = totals / len(diff)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def split_of(path):
    """The user split a multi-target checkpoint was trained on (its split_seed, else its seed)."""
    from recbole_mind import multi_target
    from recbole_mind.checkpoint import load_checkpoint

    config = load_checkpoint(path)["config"]
    if config["eval_protocol"] != multi_target.NAME:
        raise UserError(f"{path} was not trained under the multi_target protocol: "
                        "give checkpoints of runs with eval_protocol=multi_target")
    seed = config["split_seed"]
    return (config["dataset"], config["seed"] if seed is None else seed)


def per_user_recalls(specs, n=50, data_path=None):
    """{label: recalls}, ``groups`` (the split of each row), from (label, path) pairs: the rows
    of every split in user order, the same users for every label."""
    import torch

    splits = {}
    for label, path in specs:
        split = split_of(path)
        if label in splits.setdefault(split, {}):
            raise UserError(f"{label} is given twice for split {split[1]} of {split[0]}: one checkpoint a label a split")
        splits[split][label] = path
    labels = list(dict.fromkeys(label for label, _ in specs))
    for split, given in splits.items():
        missing = [label for label in labels if label not in given]
        if missing:
            raise UserError(f"split {split[1]} of {split[0]} has no checkpoint for {', '.join(missing)}: "
                            "give every label on every split")
    recalls, groups = {label: [] for label in labels}, []
    for split, given in splits.items():
        users = None
        for label in labels:
            model, test_data, _ = load(given[label], data_path)
            split_users, _, split_recalls = multi_target_recalls(model, test_data, n)
            order = split_users.argsort()
            if users is None:
                users = split_users[order]
            elif not torch.equal(split_users[order], users):
                raise UserError(f"{label} was not evaluated on the same test users as {labels[0]} on split {split[1]}")
            recalls[label].append(split_recalls[order].numpy())
        groups += [f"{split[0]}/{split[1]}"] * len(users)
    return {label: np.concatenate(parts) for label, parts in recalls.items()}, np.asarray(groups)


def table(recalls, groups, n=50, draws=10000, seed=0):
    """Markdown: each label's mean Recall@n per split, then every pair's paired difference."""
    labels, splits = list(recalls), list(dict.fromkeys(groups))
    lines = [f"| Recall@{n} | " + " | ".join(splits) + " | all users |", "|---|" + "---|" * (len(splits) + 1)]
    for label in labels:
        cells = [f"{recalls[label][groups == s].mean():.4f}" for s in splits] + [f"{recalls[label].mean():.4f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"| A - B ({len(groups)} users) | mean | 95% interval (bootstrap over users) | A better | B better | tied |",
              "|---|---|---|---|---|---|"]
    for first, second in itertools.combinations(labels, 2):
        a, b = recalls[first], recalls[second]
        mean, low, high = paired_bootstrap(a, b, groups, draws, seed)
        lines.append(f"| {first} - {second} | {mean:+.4f} | [{low:+.4f}, {high:+.4f}] | "
                     f"{int((a > b).sum())} | {int((b > a).sum())} | {int((a == b).sum())} |")
    return "\n".join(lines)


@user_errors_exit_2
def main():
    parser = argparse.ArgumentParser(prog="python -m bench.paired_users", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, metavar="LABEL=PATH")
    parser.add_argument("--n", type=int, default=50, help="N of Recall@N")
    parser.add_argument("--draws", type=int, default=10000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data_path", default=None,
                        help="folder holding the checkpoints' dataset, if not where they were trained")
    args = parser.parse_args()
    specs = checkpoint_specs(args.checkpoint)
    if len({label for label, _ in specs}) < 2:
        raise UserError("give at least two labels to compare, e.g. --checkpoint MIND=... --checkpoint GRU4Rec=...")
    if args.n < 1 or args.draws < 1:
        raise UserError(f"--n and --draws must be >= 1, got {args.n} and {args.draws}")

    import torch

    torch.set_num_threads(args.threads)
    recalls, groups = per_user_recalls(specs, args.n, args.data_path)
    print(table(recalls, groups, args.n, args.draws, args.seed))


if __name__ == "__main__":
    main()
