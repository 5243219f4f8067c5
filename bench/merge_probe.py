"""Recall@50 of trained multi_target MIND checkpoints with the serving max over interests against
a round-robin merge of the interests' own top-50 lists (each active interest in turn).

Usage: python -m bench.merge_probe CHECKPOINT [CHECKPOINT ...]
"""

import sys

import numpy as np
import torch


def recall(lists, targets):
    return float(np.mean([len({t for t in row if t} & set(found)) / len({t for t in row if t})
                          for found, row in zip(lists, targets)]))


def probe(path):
    from recbole_mind.checkpoint import restore

    restored = restore(path, purpose="the merge probe")
    model, loader = restored.model, restored.test_data
    by_max, by_turns = [], []
    with torch.no_grad():
        for interaction, (rows, items), _, _ in loader:
            interests, mask = model(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN])
            scores = torch.einsum("ukd,nd->ukn", interests, model.item_vectors())
            scores[:, :, 0] = -np.inf
            scores[rows, :, items] = -np.inf  # the input sequence, as the protocol removes it
            scores = scores.masked_fill(~mask.unsqueeze(-1), -np.inf)
            by_max += scores.amax(1).topk(50, dim=1).indices.tolist()
            tops = scores.topk(50, dim=2).indices
            for user in range(tops.size(0)):
                merged = []
                for rank in range(50):  # a loop over one user's lists: a probe, not a serving path
                    for j in range(int(mask[user].sum())):
                        if int(tops[user, j, rank]) not in merged:
                            merged.append(int(tops[user, j, rank]))
                by_turns.append(merged[:50])
    targets = [row.tolist() for row in loader.targets]
    return recall(by_max, targets), recall(by_turns, targets)


if __name__ == "__main__":
    torch.set_num_threads(1)
    for checkpoint in sys.argv[1:]:
        print(checkpoint, "max %.4f  round-robin %.4f" % probe(checkpoint))
