"""MIND's serving scores: an item's scores by a user's active interests merged (their max, or their
mixture), and the history filter."""

import torch


def exclude_input_sequence(scores, item_seq):
    """``scores`` [B, n_items] with the items of each row's input sequence (and the padding item
    0) set to -inf, in place; returns ``scores``.

    Why MIND's ``exclude_history`` does this (not in the paper; docs/model.md): RecBole's full
    ranking of sequential models leaves the user's own history in the ranking, and a model that
    builds its interests from the behaviours scores those very behaviours highest; retrieval
    filters them in any case. ``train.history_excluded`` applies the same filter to any model,
    for comparisons.
    """
    return scores.scatter_(1, item_seq, float("-inf"))


def active_first(interest_mask):
    """[B, K] each row's interest slots, its active ones first (in order), then the inactive."""
    return torch.argsort((~interest_mask).to(torch.int8), dim=1, stable=True)


def pack_active(interests, interest_mask):
    """[B, K, d]: each row's active interests first, every inactive slot a copy of the row's first
    active one. A duplicate never changes a max over the interests, so scoring the packed
    interests needs no mask (each row needs one active interest)."""
    k, dim = interests.shape[1:]
    active = interest_mask.sum(dim=1)
    slots = active_first(interest_mask)
    packed = interests.gather(1, slots.unsqueeze(-1).expand(-1, -1, dim))
    prefix = torch.arange(k, device=active.device).unsqueeze(0) < active.unsqueeze(1)
    return torch.where(prefix.unsqueeze(-1), packed, packed[:, :1])


def max_interest_scores(interests, interest_mask, item_emb, block_rows=256, block_items=1024):
    """[B, N] max over active interests of v_u^j . e_i.

    A [B, N] matmul per interest then a max sends K products of B x N floats through memory
    (388 MB each for 4096 users x 23.7k items). Here the work goes in tiles of ``block_rows``
    users x ``block_items`` items whose products stay in cache: one matmul of the tile's users'
    active interests, then the max over them, written once into the result (equal to the plain
    max: tests/test_mind.py). With a varying number of active interests (dynamic_interest),
    rows are sorted by it so a tile scores only as many interests as its rows use.
    """
    batch, _, dim = interests.shape
    n_items = item_emb.size(0)
    active = interest_mask.sum(dim=1)
    if batch == 0 or not bool((active > 0).all()):  # a row with no interest: its scores -inf
        scores = torch.einsum("bkd,nd->bkn", interests, item_emb)
        return scores.masked_fill_(~interest_mask.unsqueeze(-1), float("-inf")).amax(dim=1)
    packed = pack_active(interests, interest_mask)
    sorted_rows = not bool((active == active[0]).all())
    if sorted_rows:
        order = torch.argsort(active, descending=True, stable=True)
        packed, active = packed[order], active[order]
    items_t = item_emb.t()
    scores = torch.empty(batch, n_items, dtype=interests.dtype, device=interests.device)
    for r0 in range(0, batch, block_rows):
        r1 = min(r0 + block_rows, batch)
        used = int(active[r0])  # the most active interests in this tile (rows sorted)
        tile_interests = packed[r0:r1, :used].reshape(-1, dim)
        for c0 in range(0, n_items, block_items):
            c1 = min(c0 + block_items, n_items)
            products = (tile_interests @ items_t[:, c0:c1]).view(r1 - r0, used, c1 - c0)
            if sorted_rows:
                scores[order[r0:r1], c0:c1] = products.amax(dim=1)
            else:
                torch.amax(products, dim=1, out=scores[r0:r1, c0:c1])
    return scores


def merge_interests(scores, interest_mask, merge="max", temperature=1.0):
    """[B, ...]: each item's scores [B, K, ...] by a row's K interests merged over the active ones
    (``interest_mask`` [B, K]): ``max``, the best interest's; ``mixture``, tau log sum_k exp(s_k / tau),
    the log of the summed probabilities of the interests' softmaxes at the training temperature,
    in the scores' own units."""
    mask = interest_mask.view(interest_mask.shape + (1,) * (scores.dim() - 2))
    scores = scores.masked_fill(~mask, float("-inf"))
    if merge == "max":
        return scores.amax(dim=1)
    return temperature * torch.logsumexp(scores / temperature, dim=1)


def mixture_interest_scores(interests, interest_mask, item_emb, temperature, block_rows=256, block_items=1024):
    """[B, N] :func:`merge_interests` ``mixture`` of every item's scores, in tiles that stay in cache."""
    batch, n_items = interests.size(0), item_emb.size(0)
    scores = torch.empty(batch, n_items, dtype=interests.dtype, device=interests.device)
    for r0 in range(0, batch, block_rows):
        rows = slice(r0, min(r0 + block_rows, batch))
        for c0 in range(0, n_items, block_items):
            items = slice(c0, min(c0 + block_items, n_items))
            products = torch.einsum("bkd,nd->bkn", interests[rows], item_emb[items])
            scores[rows, items] = merge_interests(products, interest_mask[rows], "mixture", temperature)
    return scores


def interest_scores(interests, interest_mask, item_emb, merge="max", temperature=1.0):
    """[B, N] every item's serving score, its active interests' scores merged as ``merge`` says."""
    if merge == "mixture":
        return mixture_interest_scores(interests, interest_mask, item_emb, temperature)
    return max_interest_scores(interests, interest_mask, item_emb)
