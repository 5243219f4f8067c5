"""Controllable diversity: ComiRec's greedy aggregation of the merged per-interest candidates.

ComiRec (Cen et al., KDD 2020, section 3.4) builds a user's list from the union of every
interest's top N by adding, one at a time, the candidate that maximises

    f(u, i) - lambda * #{j already in the list: j shares a category with i}

where f is the model's score; lambda = 0 is the plain top N by score, a larger lambda trades
score for lists that span more categories. :func:`greedy_rerank` does this for a batch of users
at once (a loop over the N positions only); :func:`diversified` makes any model's
``full_sort_predict`` rank that way, for the evaluation of a protocol.
"""

import contextlib

import torch

from recbole_mind.model import MIND


def greedy_rerank(candidates, scores, labels, n, lam):
    """[U, n] items picked greedily from each row's ``candidates``.

    Args:
        candidates: [U, M] int64 item ids (-1 or repeated ids allowed: a repeat or -1 is never picked
            twice; -1 is never picked while a real candidate is left).
        scores: [U, M] the model's score of each candidate (-inf: not a candidate).
        labels: [n_items, G] category matrix (an item's non-zero columns are its categories).
        n: list length; lam: lambda >= 0.
    """
    rows = torch.arange(candidates.size(0), device=candidates.device)
    present = (labels[candidates.clamp(min=0)] > 0).float()  # [U, M, G]
    gain = scores.clone().masked_fill(candidates < 0, float("-inf"))
    # a repeated candidate: keep its first occurrence
    ordered, order = candidates.sort(dim=1, stable=True)
    repeat = torch.zeros_like(ordered, dtype=torch.bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    gain.scatter_(1, order, gain.gather(1, order).masked_fill(repeat, float("-inf")))
    same = torch.zeros_like(scores)  # items already picked that share a category with each candidate
    picked = []
    for _ in range(min(n, candidates.size(1))):
        choice = (gain - lam * same).argmax(dim=1)
        left = torch.isfinite(gain[rows, choice])  # a row out of candidates gets -1
        picked.append(candidates[rows, choice].masked_fill(~left, -1))
        same += (torch.einsum("umg,ug->um", present, present[rows, choice]) > 0).float()
        gain[rows, choice] = float("-inf")
    return torch.stack(picked, dim=1) if picked else candidates[:, :0]


def interest_candidates(model, interaction, n, scores):
    """([U, K n] items, [U, K n] scores): the union of each active interest's top n for a MIND (its
    serving max as the score), the top 4 n for any other model. ``scores`` [U, n_items] are the
    model's full-sort scores with anything not to recommend at -inf."""
    if not isinstance(model, MIND) or model.interest_num == 1:
        values, items = scores.topk(min(4 * n, scores.size(1)), dim=1)
        return items, values
    vectors, mask = model(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN],
                          interaction[model.USER_ID] if model.user_profile is not None else None)
    table, width, blocked = model.item_vectors(), min(n, scores.size(1)), torch.isinf(scores)
    tops = []
    for start in range(0, len(vectors), 256):  # [256, K, n_items] scores at a time, not [U, K, n_items]
        rows = slice(start, start + 256)
        per_interest = torch.einsum("ukd,nd->ukn", vectors[rows], table)
        per_interest = per_interest.masked_fill(~mask[rows].unsqueeze(-1) | blocked[rows].unsqueeze(1), float("-inf"))
        tops.append(per_interest.topk(width, dim=2).indices.flatten(1))  # [256, K n]
    items = torch.cat(tops)
    values = scores.gather(1, items)
    inactive = ~mask.repeat_interleave(width, dim=1)
    return items.masked_fill(inactive, -1), values.masked_fill(inactive, float("-inf"))


@contextlib.contextmanager
def diversified(model, labels, lam, n, exclude=None):
    """Within the block, ``model.full_sort_predict`` gives the greedy lists of :func:`greedy_rerank`
    as scores (n, n - 1, ..., 1 for the picked items, -inf elsewhere), so RecBole's evaluation
    ranks the diversified lists. ``exclude(interaction)``, if given, returns (rows, items) to
    remove before the candidates are drawn (the protocol's input sequences)."""
    original = model.full_sort_predict

    def ranked(interaction):
        with torch.no_grad():
            scores = original(interaction).view(len(interaction), -1).clone()
            scores[:, 0] = float("-inf")
            if exclude is not None:
                scores[exclude(interaction)] = float("-inf")
            items, values = interest_candidates(model, interaction, n, scores)
            picks = greedy_rerank(items, values, labels, n, lam)
            out = torch.full((len(interaction), model.n_items), float("-inf"))
            rank_scores = torch.arange(picks.size(1), 0, -1, dtype=out.dtype).expand_as(picks)
            valid = picks >= 0
            out[torch.nonzero(valid, as_tuple=True)[0], picks[valid]] = rank_scores[valid]
            return out

    model.full_sort_predict = ranked
    try:
        yield model
    finally:
        del model.full_sort_predict  # back to the class's method
