"""How much of a model's ranking is the same for every user: the popularity share of its scores.

For the first test batch of each checkpoint (any RecBole sequential model: MIND or a built-in)
this prints
- the mean cosine between a user vector and the mean of all user vectors (1: every user points
  the same way; MIND: the first interest, built-ins: ``forward``'s sequence output),
- the share of the variance of the full-sort scores [users x items] that is the item's mean score
  over users, i.e. one ranking shared by everyone,
- the Spearman correlation between that mean score and the item's training count (how much the
  shared ranking is popularity),
- the median rank (among all items) of the test item for rows whose test item is in the long
  tail (training count < 10).

Why: ``bench.bucket_eval --by popularity`` showed MIND losing to SASRec on the catalogue's
tail and winning at its head. MIND's interests leave a ReLU (non-negative coordinates), so every
two users' vectors have a positive dot product; this measures whether that gives a shared,
popularity-shaped ranking.

Usage (from the project root):
    python -m bench.user_vectors --data_path ../shared/data \
        --checkpoint MIND=saved/compare/amazon-videogames/MIND_lr0.003/MIND-....pth \
        --checkpoint SASRec=saved/compare/amazon-videogames/SASRec_lr0.003/SASRec-....pth
"""

import argparse

from bench.bucket_eval import checkpoint_specs, load
from bench.tool_errors import user_errors_exit_2


def spearman(a, b):
    """Spearman rank correlation of two 1-d tensors (pandas computes it)."""
    import pandas as pd

    return float(pd.Series(a.numpy()).corr(pd.Series(b.numpy()), method="spearman"))


def figures(model, test_data, counts):
    import torch

    from recbole_mind.model import MIND
    from recbole_mind.model.scoring import max_interest_scores

    interaction, _, _, positive_i = next(iter(test_data))
    seq, lengths = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
    with torch.no_grad():
        if isinstance(model, MIND):  # raw scores: full_sort_predict's history filter left out
            table = model.item_vectors()
            interests, mask = model._interests_of(interaction, table)
            scores = max_interest_scores(interests, mask, table)
            users = interests[:, 0]
        else:
            scores = model.full_sort_predict(interaction).view(len(interaction), -1)
            users = model.forward(seq, lengths)
    scores = scores[:, 1:].double()  # padding item out
    mean_direction = torch.nn.functional.normalize(users.mean(dim=0), dim=0)
    cosine = float((torch.nn.functional.normalize(users, dim=1) @ mean_direction).mean())
    item_mean = scores.mean(dim=0)
    shared = float(item_mean.var() / scores.var())
    popularity = spearman(item_mean, counts[1:].double())
    target = positive_i.view(-1)
    rank = (scores > scores.gather(1, (target - 1).view(-1, 1))).sum(dim=1)
    tail = counts[target] < 10
    return cosine, shared, popularity, float(rank[tail].double().median()), int(tail.sum()), len(target)


@user_errors_exit_2
def main():
    parser = argparse.ArgumentParser(prog="python -m bench.user_vectors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, metavar="LABEL=PATH")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data_path", default=None,
                        help="folder holding the checkpoints' dataset, if not where they were trained")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    specs = checkpoint_specs(args.checkpoint)
    print("| model | cosine to the mean user vector | score variance shared by all users | "
          "Spearman(mean score, training count) | median rank of tail test items |")
    print("|---|---|---|---|---|")
    for label, path in specs:
        model, test_data, counts = load(path, args.data_path)
        cosine, shared, popularity, tail_rank, tail_rows, rows = figures(model, test_data, counts)
        print(f"| {label} | {cosine:.3f} | {shared:.3f} | {popularity:.3f} | {tail_rank:.0f} "
              f"({tail_rows} of {rows} rows) |")


if __name__ == "__main__":
    main()
