"""MIND's training losses: the exact softmax over the item table in chunks, and the sampled softmax.

The exact softmax cross-entropy over the whole item table is computed in item chunks.

``cross_entropy(user @ table.T, labels)`` writes and reads [B, n_items] float tensors several
times per step (logits, log-softmax, its gradient, the masks): on amazon-videogames (B 2048,
23.7k items) each is 194 MB, and a training step spent most of its time on these passes over
memory, not on arithmetic.
This computes the same loss and gradients from chunks of the table small enough to stay in the
CPU's cache: an online log-sum-exp forward, and a backward that recomputes each chunk's logits
and adds its softmax gradient straight into the user and table gradients. Nothing [B, n_items]
is kept; the result equals the plain version up to float rounding (tests/test_loss.py).
"""

import torch

from recbole_mind.model.scoring import merge_interests

DEFAULT_CHUNK_BYTES = 4 << 20  # logits of one chunk: 4 MiB of float32


def _chunk_size(rows, chunk_bytes):
    return max(64, chunk_bytes // (4 * max(rows, 1)))


class _Exclusions:
    """(row, item) pairs to leave out, sorted by item so each chunk finds its own by bisection
    (a masked_fill with a [B, chunk] slice of a dense mask costs a fifth of the step)."""

    def __init__(self, rows, items):
        order = torch.argsort(items)
        self.rows, self.items = rows[order], items[order]

    def apply(self, logits, start, stop):
        lo, hi = torch.searchsorted(self.items, torch.tensor([start, stop], device=self.items.device)).tolist()
        if hi > lo:
            if logits.dim() == 3:  # [B, K, chunk]: out of every vector's scores
                logits[self.rows[lo:hi], :, self.items[lo:hi] - start] = float("-inf")
            else:
                logits[self.rows[lo:hi], self.items[lo:hi] - start] = float("-inf")


def _chunk_logits(user, table, start, stop, excluded, padding_idx, dtype):
    """The chunk's logits [B, chunk] in ``dtype``, and for several vectors a row the products
    [B, K, chunk] and their max over the K vectors before the conversion to ``dtype`` (else None).

    The max is taken with ``amax``: a max that also returns the index of the vector costs ten
    times the chunk's matmul on CPUs, and only the backward needs it (``_spread``)."""
    products = peak = None
    if user.dim() == 2:
        logits = (user @ table[start:stop].t()).to(dtype)
    else:
        rows, k, dim = user.shape
        products = (user.reshape(rows * k, dim) @ table[start:stop].t()).view(rows, k, stop - start)
        peak = products.amax(dim=1)
        logits = peak.to(dtype)
    if excluded is not None:
        excluded.apply(logits, start, stop)
    if padding_idx is not None and start <= padding_idx < stop:
        logits[:, padding_idx - start] = float("-inf")
    return logits, products, peak


def _mixture_chunk_logits(user, table, start, stop, excluded, padding_idx, dtype, inactive):
    """[B, K, chunk] logits in ``dtype`` of every vector against the chunk's items, -inf for the
    excluded items, the padding item and the inactive vectors (``inactive`` [B, K] bool or None)."""
    rows, k, dim = user.shape
    logits = (user.reshape(rows * k, dim) @ table[start:stop].t()).view(rows, k, stop - start).to(dtype)
    if inactive is not None:
        logits.masked_fill_(inactive.unsqueeze(-1), float("-inf"))
    if excluded is not None:
        excluded.apply(logits, start, stop)
    if padding_idx is not None and start <= padding_idx < stop:
        logits[:, :, padding_idx - start] = float("-inf")
    return logits


def _mixture_label_logits(user, labels_m, dtype, inactive):
    """[B, K] each vector's logit of its row's label (-inf where inactive)."""
    logits = (user * labels_m.unsqueeze(1)).to(dtype).sum(dim=2)
    return logits if inactive is None else logits.masked_fill(inactive, float("-inf"))


def _label_logits(user, labels_m, dtype):
    """Each row's logit of its label [B], and for several vectors a row the one that gave it."""
    if user.dim() == 2:
        return (user * labels_m).to(dtype).sum(dim=1), None
    return (user * labels_m.unsqueeze(1)).to(dtype).sum(dim=2).max(dim=1)


def _spread(probs, products, peak):
    """[B * K, chunk]: each logit's d loss ``probs`` [B, chunk] in the row of the first vector that
    reaches the logit's max ``peak`` in ``products`` [B, K, chunk], zero in the others.

    The marks are arithmetic, 1 - sign(peak - product) (peak is the max: 1 where a vector reaches
    it, else 0), in the products' dtype: on CPUs a comparison and a bool-to-float product cost
    twice these passes over the [B, K, chunk] products."""
    rows, k, width = products.shape
    spread = probs.new_empty(rows, k, width)
    free = None  # 1 where no earlier vector reached the max
    for j in range(k):
        mark = torch.sub(peak, products[:, j]).sign_().neg_().add_(1)
        if free is None:
            free = 1 - mark
        else:
            mark.mul_(free)
            free.sub_(mark)
        torch.mul(probs, mark, out=spread[:, j])
    return spread.view(rows * k, width)


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, user, table, labels, excluded, padding_idx, chunk, matmul_dtype):
        rows, n_items = user.size(0), table.size(0)
        user_m, table_m = user.to(matmul_dtype), table.to(matmul_dtype)
        lse = torch.full((rows,), float("-inf"), dtype=user.dtype, device=user.device)
        for start in range(0, n_items, chunk):
            logits, _, _ = _chunk_logits(user_m, table_m, start, min(start + chunk, n_items), excluded,
                                         padding_idx, user.dtype)
            lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1))
        # the label's logit as the softmax saw it (the same rounding)
        target, label_best = _label_logits(user_m, table_m[labels], user.dtype)
        # the low-precision table is kept rather than converted again in the backward: one pass
        # over the table less per step, at half the table's size in memory
        ctx.save_for_backward(user, table, table_m, labels, lse)
        ctx.excluded, ctx.padding_idx, ctx.chunk, ctx.matmul_dtype = excluded, padding_idx, chunk, matmul_dtype
        ctx.label_best = label_best  # for several vectors a row, the one that gave each label's logit
        return (lse - target).mean()

    @staticmethod
    def backward(ctx, grad_output):
        user, table, table_m, labels, lse = ctx.saved_tensors
        rows, n_items = user.size(0), table.size(0)
        k = user.size(1) if user.dim() == 3 else 1
        dtype = ctx.matmul_dtype
        user_m = user.to(dtype)
        flat, flat_m = user.reshape(rows * k, -1), user_m.reshape(rows * k, -1)
        scale = grad_output / rows
        grad_user = torch.zeros_like(flat)
        grad_table = torch.empty_like(table)  # every row is written once, by its own chunk
        for start in range(0, n_items, ctx.chunk):
            stop = min(start + ctx.chunk, n_items)
            # softmax of the chunk (excluded items: exp(-inf) = 0), times d loss / d logit
            logits, products, peak = _chunk_logits(user_m, table_m, start, stop, ctx.excluded, ctx.padding_idx,
                                                   user.dtype)
            probs = (logits - lse.unsqueeze(1)).exp_().mul_(scale)
            if dtype == user.dtype:
                if products is not None:
                    probs = _spread(probs, products, peak)
                grad_user.addmm_(probs, table[start:stop])
                torch.mm(probs.t(), flat, out=grad_table[start:stop])
            else:  # products in the low precision, sums kept in the gradients' own dtype
                probs_m = probs.to(dtype)
                if products is not None:
                    probs_m = _spread(probs_m, products, peak)
                grad_user += probs_m @ table_m[start:stop]
                grad_table[start:stop] = probs_m.t() @ flat_m
        # minus the one-hot of each label, on the vector that gave the label's logit
        best = ctx.label_best
        label_rows = torch.arange(rows, device=user.device) * k + (0 if best is None else best)
        grad_user.index_add_(0, label_rows, -scale * table[labels])
        grad_table.index_add_(0, labels, -scale * flat[label_rows])
        return grad_user.view_as(user), grad_table, None, None, None, None, None


class _ChunkedMixtureCrossEntropy(torch.autograd.Function):
    """The softmax over items of log sum_k exp(user_k . e_i): the softmax over every (vector, item)
    pair, its probabilities summed over the vectors. An item's logit is the log of the summed
    exponentials of its K vectors' scores, each vector's share of the label the label's softmax
    over the vectors."""

    @staticmethod
    def forward(ctx, user, table, labels, excluded, padding_idx, chunk, matmul_dtype, inactive):
        rows, n_items = user.size(0), table.size(0)
        user_m, table_m = user.to(matmul_dtype), table.to(matmul_dtype)
        lse = torch.full((rows,), float("-inf"), dtype=user.dtype, device=user.device)
        for start in range(0, n_items, chunk):
            logits = _mixture_chunk_logits(user_m, table_m, start, min(start + chunk, n_items), excluded,
                                           padding_idx, user.dtype, inactive)
            lse = torch.logaddexp(lse, torch.logsumexp(logits.flatten(1), dim=1))
        label_logits = _mixture_label_logits(user_m, table_m[labels], user.dtype, inactive)
        target = torch.logsumexp(label_logits, dim=1)
        ctx.save_for_backward(user, table, table_m, labels, lse, (label_logits - target.unsqueeze(1)).exp())
        ctx.excluded, ctx.padding_idx, ctx.chunk, ctx.matmul_dtype = excluded, padding_idx, chunk, matmul_dtype
        ctx.inactive = inactive
        return (lse - target).mean()

    @staticmethod
    def backward(ctx, grad_output):
        user, table, table_m, labels, lse, label_shares = ctx.saved_tensors
        rows, k = user.shape[:2]
        n_items, dtype = table.size(0), ctx.matmul_dtype
        user_m = user.to(dtype)
        flat, flat_m = user.reshape(rows * k, -1), user_m.reshape(rows * k, -1)
        scale = grad_output / rows
        grad_user = torch.zeros_like(flat)
        grad_table = torch.empty_like(table)
        for start in range(0, n_items, ctx.chunk):
            stop = min(start + ctx.chunk, n_items)
            logits = _mixture_chunk_logits(user_m, table_m, start, stop, ctx.excluded, ctx.padding_idx,
                                           user.dtype, ctx.inactive)
            probs = (logits - lse.view(rows, 1, 1)).exp_().mul_(scale).view(rows * k, stop - start)
            if dtype == user.dtype:
                grad_user.addmm_(probs, table[start:stop])
                torch.mm(probs.t(), flat, out=grad_table[start:stop])
            else:
                probs_m = probs.to(dtype)
                grad_user += probs_m @ table_m[start:stop]
                grad_table[start:stop] = probs_m.t() @ flat_m
        # minus the label's one-hot, shared among the vectors by their softmax over the label
        shares = (scale * label_shares).reshape(rows * k, 1)
        grad_user -= shares * table[labels].repeat_interleave(k, dim=0)
        grad_table.index_add_(0, labels, -(shares * flat).view(rows, k, -1).sum(dim=1))
        return grad_user.view_as(user), grad_table, None, None, None, None, None, None


def cross_entropy(user, table, labels, excluded=None, padding_idx=None, chunk_bytes=DEFAULT_CHUNK_BYTES,
                  matmul_dtype=None, merge="max", interest_mask=None):
    """mean over rows of -log softmax(user @ table.T)[label], items in ``excluded`` left out.

    With several vectors a row, ``user`` [B, K, d], an item's logit merges its scores over the
    row's K vectors (the ranking MIND serves): ``merge`` "max", the best score, ``max_k user_k . e_i``,
    each logit's gradient going to the vector that gave it; "mixture", ``log sum_k exp(user_k . e_i)``
    over the vectors ``interest_mask`` [B, K] marks active (default: all).

    Args:
        user: [B, d] or [B, K, d] float user vectors (already divided by any temperature).
        table: [N, d] item vectors.
        labels: [B] int64 label items; a label must not be excluded in its own row.
        excluded: optional (rows, items), two int64 tensors of equal length: item items[k] is left
            out of row rows[k]'s softmax (repeats allowed).
        padding_idx: optional item left out of every row (RecBole's padding item 0).
        chunk_bytes: the size of one chunk of logits.
        matmul_dtype: the dtype of the three matmuls (default: the inputs'); ``torch.bfloat16``
            roughly halves their time on CPUs with bf16 units, at bf16's ~3 significant digits
            in each logit (the log-sum-exp and the gradients' sums stay in float32).
    """
    if merge not in ("max", "mixture"):
        raise ValueError(f"merge must be max or mixture, got {merge!r}")
    if user.dim() == 3 and user.size(1) == 1:  # one vector a row: the same logits, nothing to merge
        user = user.squeeze(1)
    chunk = _chunk_size(user.size(0) * (user.size(1) if user.dim() == 3 else 1), chunk_bytes)
    if excluded is not None:
        excluded = _Exclusions(*excluded)
    if merge == "mixture" and user.dim() == 3:
        inactive = None if interest_mask is None or bool(interest_mask.all()) else ~interest_mask
        return _ChunkedMixtureCrossEntropy.apply(user, table, labels, excluded, padding_idx, chunk,
                                                 matmul_dtype or user.dtype, inactive)
    return _ChunkedCrossEntropy.apply(user, table, labels, excluded, padding_idx, chunk,
                                      matmul_dtype or user.dtype)


def sampled_softmax(user, pos_items, pos_emb, negatives, neg_emb, log_q, item_seq=None, merge="max",
                    interest_mask=None):
    """Sampled softmax with log-Q correction over ``negatives`` shared by the batch.

    With several vectors a row, ``user`` [B, K, d], an item's logit merges its scores over the
    row's K vectors as :func:`cross_entropy`'s ``merge`` and ``interest_mask`` say.

    Args:
        user: [B, d] or [B, K, d] user vectors (already divided by any temperature).
        pos_items, pos_emb: [B] labels and [B, d] their vectors.
        negatives, neg_emb: [M] sampled items and [M, d] their vectors.
        log_q: [n_items] log-probability of the proposal each item was drawn from.
        item_seq: optional [B, L] input sequences whose items are masked as negatives of their
            row (``exclude_history``); a negative equal to the row's label is always masked.
    """
    if user.dim() == 3:
        pos_score, neg_scores = (user * pos_emb.unsqueeze(1)).sum(-1), user @ neg_emb.t()
        if merge == "mixture":  # the user already divided by the temperature: log sum_k exp
            if interest_mask is None:
                interest_mask = torch.ones(user.shape[:2], dtype=torch.bool, device=user.device)
            pos_score, neg_scores = (merge_interests(scores, interest_mask, merge) for scores in (pos_score, neg_scores))
        else:
            pos_score, neg_scores = pos_score.max(dim=1).values, neg_scores.max(dim=1).values
    else:
        pos_score, neg_scores = (user * pos_emb).sum(-1), user @ neg_emb.t()
    pos_logit = (pos_score - log_q[pos_items]).unsqueeze(-1)
    neg_logits = neg_scores - log_q[negatives]
    hits = negatives.unsqueeze(0) == pos_items.unsqueeze(1)
    if item_seq is not None:
        # each negative looked up in the row's sorted sequence: [B, M], no [B, n_items] mask
        # (SSM is for catalogues too large for one)
        ordered = item_seq.sort(dim=1).values
        negs = negatives.unsqueeze(0).expand(item_seq.size(0), -1).contiguous()
        found = torch.searchsorted(ordered, negs).clamp(max=item_seq.size(1) - 1)
        hits = hits | (ordered.gather(1, found) == negs)
    neg_logits = neg_logits.masked_fill(hits, float("-inf"))
    logits = torch.cat([pos_logit, neg_logits], dim=1)
    return torch.nn.functional.cross_entropy(logits, torch.zeros_like(pos_items))
