"""Where one model beats another: test NDCG@10 and Recall@50 by the length of the user's history
(or, with ``--by popularity``, by how often the test item occurs in the training split).

Loads trained checkpoints of any RecBole sequential model (MIND or a built-in, from the
comparison's ``saved/compare/...`` or from ``bench.mind_experiments``), each rebuilt with the
settings it was trained with (``--data_path`` if its dataset has moved), ranks every item for each
test row with the model's own ``full_sort_predict``, removes the row's input sequence from the
ranking for every model alike (as the comparison's history-excluded table does), and reports
the metrics per bucket of history length n (the items before the test item, capped at
MAX_ITEM_LIST_LENGTH). The "all" row reproduces each model's history-excluded test figures.
A checkpoint trained under the multi-target protocol is measured on its own protocol: each held-out
user's Recall@50 over their targets, by the length of their input sequence.
``--by popularity`` buckets the rows by the test item's count among the training split's
interactions instead: whether a model loses on the head of the catalogue or on its tail.

A multi-interest model should gain where histories are long and mixed; an order-aware one where
the next item follows the last. This measures which it is, per dataset.

Usage (from the project root):
    python -m bench.bucket_eval --data_path ../shared/data \
        --checkpoint MIND=saved/compare/amazon-videogames/MIND_lr0.003/MIND-....pth \
        --checkpoint GRU4Rec=saved/compare/amazon-videogames/GRU4Rec_lr0.003/GRU4Rec-....pth
"""

import argparse
import math

from bench.tool_errors import user_errors_exit_2
from recbole_mind.errors import UserError

BUCKETS = ((1, 1), (2, 3), (4, 7), (8, 15), (16, 49), (50, 50))
POPULARITY_BUCKETS = ((0, 0), (1, 9), (10, 49), (50, 199), (200, 999), (1000, 10**9))


def checkpoint_specs(specs):
    """[(label, path)] from ``--checkpoint LABEL=PATH`` values; a malformed one is a UserError."""
    pairs = [spec.partition("=") for spec in specs]
    for spec, (label, sep, path) in zip(specs, pairs):
        if not (label and sep and path):
            raise UserError(f"--checkpoint {spec!r} is not LABEL=PATH")
    return [(label, path) for label, _, path in pairs]


def load(path, data_path=None):
    """(model in eval mode, test loader, training counts) rebuilt from a checkpoint (a path the
    user named) with the settings it was trained with; ``data_path`` if the data has moved."""
    from recbole_mind.checkpoint import load_checkpoint, restore

    model_name = load_checkpoint(path)["config"]["model"]  # MIND or a RecBole built-in
    restored = restore(path, model=model_name, data_path=data_path, purpose="bench.bucket_eval")
    return restored.model, restored.test_data, train_counts(restored.train_data._dataset)


def multi_target_recalls(model, test_data, n=50):
    """(user ids, input lengths, Recall@n of each row) under the multi-target protocol: the row's
    input sequence and the padding item removed from the ranking, as the protocol does."""
    import torch

    from recbole_mind.multi_target import top_lists

    users, lengths, recalls, offset = [], [], [], 0
    for interaction, top in top_lists(model, test_data, n):
        targets = test_data.targets[offset:offset + len(interaction)]
        offset += len(interaction)
        found = ((top.unsqueeze(2) == targets.unsqueeze(1)) & (targets.unsqueeze(1) > 0)).any(dim=1)
        recalls.append(found.sum(dim=1).double() / (targets > 0).sum(dim=1).double())
        lengths.append(interaction[model.ITEM_SEQ_LEN])
        users.append(interaction[model.USER_ID])
    return torch.cat(users), torch.cat(lengths), torch.cat(recalls)


def train_counts(dataset):
    """[n_items] interactions of each item in the training split."""
    import torch

    counts = torch.zeros(dataset.item_num, dtype=torch.long)
    items = dataset.inter_feat[dataset.iid_field]
    counts.scatter_add_(0, items, torch.ones_like(items))
    return counts


def test_ranks(model, test_data):
    """(user ids, history lengths, test items, 0-based ranks of the test item) over all test
    rows, the row's input sequence and the padding item removed from the ranking."""
    import torch

    from recbole_mind.train import history_excluded

    users, lengths, targets, ranks = [], [], [], []
    with torch.no_grad(), history_excluded(model):
        for interaction, _, _, positive_i in test_data:
            scores = model.full_sort_predict(interaction).view(len(interaction), -1).float()
            scores[:, 0] = -math.inf
            target = scores.gather(1, positive_i.view(-1, 1))
            targets.append(positive_i.view(-1))
            ranks.append((scores > target).sum(dim=1))
            lengths.append(interaction[model.ITEM_SEQ_LEN])
            users.append(interaction[model.USER_ID])
    return torch.cat(users), torch.cat(lengths), torch.cat(targets), torch.cat(ranks)


def metrics(ranks):
    """NDCG@10, Recall@50 of one held-out item per row, from its 0-based ranks."""
    import torch

    ndcg = torch.where(ranks < 10, 1.0 / torch.log2(ranks.double() + 2.0), torch.zeros((), dtype=torch.double))
    return float(ndcg.mean()), float((ranks < 50).double().mean())


@user_errors_exit_2
def main():
    parser = argparse.ArgumentParser(prog="python -m bench.bucket_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, metavar="LABEL=PATH")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--by", choices=("history", "popularity"), default="history",
                        help="bucket the test rows by history length or by the test item's training count")
    parser.add_argument("--data_path", default=None,
                        help="folder holding the checkpoints' dataset, if not where they were trained")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    results = {}
    for label, path in checkpoint_specs(args.checkpoint):
        model, test_data, counts = load(path, args.data_path)
        if hasattr(test_data, "targets"):  # the multi-target protocol: several targets a row
            if args.by != "history":
                raise UserError("--by popularity is for one test item a row (leave-one-out)")
            users, lengths, recalls = multi_target_recalls(model, test_data)
            order = users.argsort()
            results[label] = (users[order], lengths[order], recalls[order])
            continue
        users, lengths, targets, ranks = test_ranks(model, test_data)
        order = users.argsort()
        key = lengths if args.by == "history" else counts[targets]
        results[label] = (users[order], key[order], ranks[order])
    labels = list(results)
    users, keys, _ = results[labels[0]]
    for label in labels[1:]:
        if not torch.equal(results[label][0], users):
            raise UserError(f"{label} was not evaluated on the same test users as {labels[0]}")

    multi = results[labels[0]][2].is_floating_point()  # per-row recalls rather than ranks
    names = ("R@50",) if multi else ("NDCG@10", "R@50")
    measure = (lambda recalls: [float(recalls.mean())]) if multi else metrics
    header = ["history n" if args.by == "history" else "test item's training count", "users"] + [f"{label} {m}" for label in labels for m in names]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for low, high in ((-1, 10**9), *(BUCKETS if args.by == "history" else POPULARITY_BUCKETS)):
        rows = (keys >= low) & (keys <= high)
        if not bool(rows.any()):
            continue
        name = "all" if low == -1 else (str(low) if low == high else f"{low}+" if high == 10**9 else f"{low}-{high}")
        cells = [name, str(int(rows.sum()))]
        for label in labels:
            cells += [f"{v:.4f}" for v in measure(results[label][2][rows])]
        print("| " + " | ".join(cells) + " |")
    if len(labels) == 2 and not multi:
        a, b = (results[label][2] for label in labels)
        print(f"\n{labels[0]} ranks the test item higher for {float((a < b).double().mean()):.1%} of users, "
              f"{labels[1]} for {float((b < a).double().mean()):.1%}, tied {float((a == b).double().mean()):.1%}")


if __name__ == "__main__":
    main()
