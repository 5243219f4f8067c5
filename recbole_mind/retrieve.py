"""The retrieve mode: every user's top N items through a faiss index.

MIND serves a user by K'_u interest vectors and scores an item by its best active interest
(docs/model.md, Serving). Retrieval here:

1. computes every user's interests and active mask with the model in eval mode (deterministic);
   the query of a user is the last ``MAX_ITEM_LIST_LENGTH`` items of the user's *full* history
   (train + valid + test interactions), i.e. the user as served after everything in the data;
2. searches each active interest in an inner-product index over ``MIND.item_vectors()``
   (``flat`` exact, ``ivf``, ``hnsw``, ``ivfpq``) for its top N, never returning the padding
   item 0 and, unless told otherwise, none of the user's own history;
3. merges the candidates of a user's interests, scoring each candidate exactly by the model's
   serving score over the active interests (max_j v_u^j . e_i, or with ``interest_merge: mixture``
   tau log sum_j exp(v_u^j . e_i / tau)), removes duplicates and keeps the top N. With ``flat``
   and the max this equals the top N of ``full_sort_predict``; the mixture can rank an item that
   no single interest holds in its top N above the candidates (at most tau log K'_u above its best
   interest's score), so there ``oversample`` > 1 brings retrieval closer to the full ranking.

Everything after the model forward is vectorised over all users (numpy/torch); the only loops
are over chunks of rows and over the rare search rounds that need a deeper list (see
:func:`search_interests`).
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from recbole_mind.histories import user_histories
from recbole_mind.diversify import greedy_rerank
from recbole_mind.errors import UserError
from recbole_mind.files import atomic_write
from recbole_mind.model.scoring import merge_interests

INDEX_TYPES = ("flat", "ivf", "hnsw", "ivfpq")
CSV_HEADER = "user_id,rank,item_id,score"


# --------------------------------------------------------------------------- index
@dataclass
class IndexParams:
    """Parameters of the faiss index; ``None`` picks a size-dependent default.

    Attributes:
        nlist: IVF cells (default ~2 sqrt(n), at least 39 items per cell).
        nprobe: IVF cells visited per query.
        hnsw_m: HNSW graph degree M.
        ef_search: HNSW search beam (raised to the list depth when that is larger).
        ef_construction: HNSW build beam.
        hnsw_metric: ``"l2"`` builds the graph on the inner-product-to-L2 reduction
            (:class:`MipsHNSW`), ``"ip"`` on the raw inner product; neither is safe everywhere
            (see results/retrieval.md).
        pq_m: PQ sub-quantizers (must divide d).
        pq_bits: bits per PQ code (2**bits centroids per sub-quantizer).
        oversample: each interest keeps ``oversample * N`` candidates before the exact merge;
            > 1 recovers the ranking lost to PQ's approximate scores.
        faiss_threads: faiss OpenMP threads (``None``: faiss's default, all cores).
    """

    nlist: int = None
    nprobe: int = 32
    hnsw_m: int = 16
    ef_search: int = 128
    ef_construction: int = 100
    hnsw_metric: str = "l2"
    pq_m: int = 16
    pq_bits: int = 8
    oversample: int = 1
    faiss_threads: int = None


def _faiss():
    import faiss  # imported lazily: only retrieval needs it

    return faiss


def default_nlist(n):
    """~2 sqrt(n) IVF cells, but no more than one per 39 vectors (faiss's k-means minimum).

    Fewer cells than faiss's usual 4-16 sqrt(n) keep the k-means cheap on a small machine;
    a probe then scans more items, which nprobe trades against recall.
    """
    return int(max(1, min(round(2 * math.sqrt(n)), n // 39)))


def build_index(vectors, kind="flat", params=None, seed=2019):
    """An inner-product faiss index over ``vectors`` [n, d] (row r is label r).

    Raises:
        UserError: unknown ``kind`` or parameters the data cannot support.
    """
    faiss = _faiss()
    params = params or IndexParams()
    if params.faiss_threads:
        faiss.omp_set_num_threads(int(params.faiss_threads))
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw" and params.hnsw_metric == "l2":
        return MipsHNSW(vectors, params)
    elif kind == "hnsw" and params.hnsw_metric == "ip":
        index = faiss.IndexHNSWFlat(d, int(params.hnsw_m), ip)
        index.hnsw.efConstruction = int(params.ef_construction)
        index.hnsw.efSearch = int(params.ef_search)
    elif kind == "hnsw":
        raise UserError(f"--hnsw_metric must be l2 or ip, got {params.hnsw_metric!r}")
    elif kind in ("ivf", "ivfpq"):
        nlist = int(params.nlist or default_nlist(n))
        if not 1 <= nlist <= n:
            raise UserError(f"--nlist {nlist} must be between 1 and the {n} indexed items: lower it")
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, ip)
        else:
            if d % int(params.pq_m):
                raise UserError(f"--pq_m {params.pq_m} must divide the embedding size {d}: use e.g. 8 or 16")
            if n < 2 ** int(params.pq_bits):
                raise UserError(f"ivfpq with --pq_bits {params.pq_bits} needs at least "
                                f"{2 ** int(params.pq_bits)} items, the catalogue has {n}: lower --pq_bits or use flat")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, int(params.pq_m), int(params.pq_bits), ip)
            index.pq.cp.niter = 10  # the small sub-space k-means settle early; 25 rounds cost 2.5x
        # k-means needs a few dozen points per centroid, not the whole catalogue: sample.
        rng = np.random.default_rng(seed)
        sample_size = min(n, 40 * max(nlist, 2 ** int(params.pq_bits) if kind == "ivfpq" else 0))
        sample = vectors[np.sort(rng.choice(n, sample_size, replace=False))] if sample_size < n else vectors
        index.train(sample)
        index.nprobe = min(int(params.nprobe), nlist)
    else:
        raise UserError(f"unknown index '{kind}': use one of {', '.join(INDEX_TYPES)}")
    index.add(vectors)
    return index


class MipsHNSW:
    """HNSW over the inner-product-to-L2 reduction (Bachrach et al., RecSys 2014).

    An item x becomes [x, sqrt(M^2 - |x|^2)] with M the largest item norm and a query q becomes
    [q, 0], so |q' - x'|^2 = |q|^2 + M^2 - 2 q.x: the L2 order is the inner-product order.
    On trained MIND item vectors (amazon-videogames) a graph on the raw inner product reached
    recall@50 0.87-0.89 at 10k items and 0.63-0.70 at 100k (efSearch 64-512), this reduction
    0.98-1.00; but where item norms spread widely (the synthetic benchmark vectors) the extra
    coordinate dominates the graph and the reduction falls to 0.40-0.78 at 100k, where the raw
    inner product gets 0.89-0.96. Neither is safe everywhere: measure, or prefer ``ivf``.
    """

    def __init__(self, vectors, params):
        faiss = _faiss()
        norms = (vectors * vectors).sum(axis=1)
        extra = np.sqrt(np.maximum(norms.max() - norms, 0.0))[:, None]
        self.index = faiss.IndexHNSWFlat(vectors.shape[1] + 1, int(params.hnsw_m))
        self.index.hnsw.efConstruction = int(params.ef_construction)
        self.index.hnsw.efSearch = int(params.ef_search)
        self.index.add(np.ascontiguousarray(np.hstack([vectors, extra]), dtype=np.float32))

    @property
    def ntotal(self):
        return self.index.ntotal

    @property
    def hnsw(self):
        return self.index.hnsw

    def search(self, queries, k):
        """(distances, labels) of the ``k`` largest inner products, like a faiss index."""
        padded = np.hstack([queries, np.zeros((len(queries), 1), dtype=np.float32)])
        return self.index.search(np.ascontiguousarray(padded), k)


# --------------------------------------------------------------------------- search and merge
def _excluded(keys, users, items, n_items):
    """[rows, k] bool: whether (users[r], items[r, c]) is in ``keys``."""
    query = users[:, None].astype(np.int64) * n_items + items
    if not len(keys):
        return np.zeros(query.shape, dtype=bool)
    pos = np.searchsorted(keys, query).clip(max=len(keys) - 1)
    return (keys[pos] == query) & (items >= 0)


def search_interests(index, labels_to_items, interests, mask, topn, n_items, exclude=None,
                     oversample=1, chunk=16384):
    """Top-``topn * oversample`` items of every active interest, padding and excluded items removed.

    Args:
        index: faiss index whose label r is item ``labels_to_items[r]``.
        labels_to_items: int64 [n_indexed].
        interests: float32 [U, K, d]; mask: bool [U, K] (only active rows are searched).
        exclude: sorted keys from :func:`recbole_mind.histories.history_keys` over (query row u, item) or ``None``.

    Returns:
        int64 [U, K, keep] candidate items (-1 where none), in the index's rank order.

    A row's list must hold ``keep`` allowed items; when exclusions eat into it, only the rows
    that fell short are searched again with a doubled depth (a handful of rounds at most).
    """
    users, slots = np.nonzero(mask)
    queries = np.ascontiguousarray(interests[users, slots], dtype=np.float32)
    keep = int(topn) * int(oversample)
    n_indexed = index.ntotal
    found = np.full((len(queries), keep), -1, dtype=np.int64)
    for start in range(0, len(queries), chunk):
        pending = np.arange(start, min(start + chunk, len(queries)))
        depth = keep if exclude is None else 2 * keep
        while len(pending):
            depth = min(depth, n_indexed)
            _, labels = index.search(queries[pending], depth)
            items = np.where(labels >= 0, labels_to_items[labels.clip(min=0)], -1)
            allowed = items > 0
            if exclude is not None:
                allowed &= ~_excluded(exclude, users[pending], items, n_items)
            done = ((allowed.sum(axis=1) >= keep) | (depth >= n_indexed)
                    | ((labels >= 0).sum(axis=1) < depth))  # the index has nothing more to give
            order = np.argsort(~allowed, axis=1, kind="stable")[:, :keep]  # allowed first, rank kept
            picked = np.take_along_axis(np.where(allowed, items, -1), order, axis=1)
            found[pending[done], :picked.shape[1]] = picked[done]
            pending = pending[~done]
            depth *= 2
    candidates = np.full(mask.shape + (keep,), -1, dtype=np.int64)
    candidates[users, slots] = found
    return candidates


def merge_candidates(interests, mask, item_vectors, candidates, topn, chunk=2048, merge="max", temperature=1.0):
    """Exact serving scores of each user's candidates, duplicates removed, top ``topn``.

    Args:
        interests: float32 [U, K, d]; mask: bool [U, K]; item_vectors: float32 [n_items, d].
        candidates: int64 [U, K, C] (-1 = none).
        merge, temperature: how the active interests' scores merge (``MIND.interest_merge``).

    Returns:
        (items int64 [U, topn] with -1 where a user has fewer candidates, scores float32
        [U, topn] with -inf there), ordered by score, ties by item id.
    """
    interests = torch.as_tensor(interests, dtype=torch.float32)
    mask = torch.as_tensor(mask, dtype=torch.bool)
    item_vectors = torch.as_tensor(item_vectors, dtype=torch.float32)
    flat = torch.as_tensor(candidates.reshape(len(candidates), -1))
    out_items = np.full((len(flat), topn), -1, dtype=np.int64)
    out_scores = np.full((len(flat), topn), -np.inf, dtype=np.float32)
    for start in range(0, len(flat), chunk):
        items = flat[start:start + chunk]
        # Sort each row by item so duplicates sit side by side; keep the first of each run.
        items, _ = torch.sort(items, dim=1)
        duplicate = torch.zeros_like(items, dtype=torch.bool)
        duplicate[:, 1:] = items[:, 1:] == items[:, :-1]
        emb = item_vectors[items.clamp(min=0)]  # [B, C, d]
        scores = torch.einsum("bkd,bcd->bkc", interests[start:start + chunk], emb)
        scores = merge_interests(scores, mask[start:start + chunk], merge, temperature)
        scores = scores.masked_fill(duplicate | (items < 0), float("-inf"))
        width = min(topn, scores.size(1))
        # items are ascending, so a stable sort by score breaks ties by item id
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :width]
        top_scores = torch.gather(scores, 1, order)
        top_items = torch.gather(items, 1, order).masked_fill(top_scores == float("-inf"), -1)
        out_items[start:start + chunk, :width] = top_items.numpy()
        out_scores[start:start + chunk, :width] = top_scores.numpy()
    return out_items, out_scores


def retrieve(interests, mask, item_vectors, topn=50, index="flat", params=None, exclude=None,
             built_index=None, labels=None, lam=0.0, merge="max", temperature=1.0):
    """Top-``topn`` items per user by serving score through a faiss index.

    Args:
        interests: float32 [U, K, d] interest vectors; mask: bool [U, K] active interests.
        item_vectors: float32 [n_items, d]; row 0 is the padding item and is never returned.
        index: one of ``INDEX_TYPES`` (ignored when ``built_index`` is given).
        exclude: sorted keys (query row, item) from :func:`recbole_mind.histories.history_keys`, or ``None``.
        built_index: reuse an index made by :func:`build_index` over ``item_vectors[1:]``.
        labels, lam: with ``lam`` > 0, the merged candidates are re-ranked greedily for category
            diversity (:func:`recbole_mind.diversify.greedy_rerank`, categories ``labels``).
        merge, temperature: how the active interests' scores merge (``MIND.interest_merge``).

    Returns:
        (items int64 [U, topn], scores float32 [U, topn]); -1 / -inf pad short lists.
    """
    if topn < 1:
        raise UserError(f"--topk must be >= 1, got {topn}")
    params = params or IndexParams()
    item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    n_items = len(item_vectors)
    faiss_index = built_index if built_index is not None else build_index(item_vectors[1:], index, params)
    if isinstance(faiss_index, (MipsHNSW, _faiss().IndexHNSW)):
        faiss_index.hnsw.efSearch = max(int(params.ef_search), int(topn) * int(params.oversample))
    labels_to_items = np.arange(1, n_items, dtype=np.int64)
    candidates = search_interests(faiss_index, labels_to_items, interests, np.asarray(mask, dtype=bool),
                                  topn, n_items, exclude=exclude, oversample=params.oversample)
    merging = {"merge": merge, "temperature": temperature}
    if not lam:
        return merge_candidates(interests, mask, item_vectors, candidates, topn, **merging)
    items, scores = merge_candidates(interests, mask, item_vectors, candidates,
                                     candidates.shape[1] * candidates.shape[2], **merging)
    picks = greedy_rerank(torch.as_tensor(items), torch.as_tensor(scores), labels, topn, lam).numpy()
    position = np.argmax(items[:, None, :] == picks[:, :, None], axis=2)  # each pick's place in items
    picked_scores = np.where(picks >= 0, np.take_along_axis(scores, position, axis=1), -np.inf)
    return picks, picked_scores.astype(np.float32)


# --------------------------------------------------------------------------- model side
@torch.no_grad()
def user_interests(model, users, item_seq, item_seq_len, batch_size=4096):
    """(interests float32 [U, K, d], mask bool [U, K]) from the model in eval mode."""
    model.eval()
    outputs, masks = [], []
    for start in range(0, len(users), batch_size):
        part = slice(start, start + batch_size)
        interests, mask = model(torch.as_tensor(item_seq[part]), torch.as_tensor(item_seq_len[part]),
                                torch.as_tensor(users[part]))
        outputs.append(interests.float().numpy())
        masks.append(mask.numpy())
    return np.concatenate(outputs), np.concatenate(masks)


@torch.no_grad()
def retrieve_for_dataset(model, dataset, topn=50, index="flat", params=None, exclude_history=True,
                         labels=None, lam=0.0):
    """Recommendations for every user of ``dataset`` with at least two interactions.

    Returns:
        (users int64 [U], items int64 [U, topn], scores float32 [U, topn]) in internal ids.
    """
    users, item_seq, item_seq_len, history = user_histories(dataset, model.max_seq_length)
    interests, mask = user_interests(model, users, item_seq, item_seq_len)
    item_vectors = model.item_vectors().float().numpy()
    items, scores = retrieve(interests, mask, item_vectors, topn, index, params,
                             exclude=history if exclude_history else None, labels=labels, lam=lam,
                             merge=model.interest_merge, temperature=model.temperature)
    return users, items, scores


def write_recommendations(path, dataset, users, items, scores):
    """CSV ``user_id,rank,item_id,score`` with RecBole's external tokens, written atomically."""
    import pandas as pd

    present = items >= 0
    rows, ranks = np.nonzero(present)
    frame = pd.DataFrame({
        "user_id": dataset.id2token(dataset.uid_field, users[rows]),
        "rank": ranks + 1,
        "item_id": dataset.id2token(dataset.iid_field, items[present]),
        "score": scores[present],
    })
    atomic_write(path, lambda f: frame.to_csv(f, index=False, float_format="%.6g"), mode="w")
    return len(frame)
