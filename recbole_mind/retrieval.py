"""Multi-interest retrieval with a faiss index, and the ``--retrieve`` / ``--export`` CLI mode.

MIND serves a user by K'_u interest vectors and scores an item by its best active interest
(MIND_SPEC.md section 6). Retrieval here:

1. computes every user's interests and active mask with the model in eval mode (deterministic);
   the query of a user is the last ``MAX_ITEM_LIST_LENGTH`` items of the user's *full* history
   (train + valid + test interactions), i.e. the user as served after everything in the data;
2. searches each active interest in an inner-product index over ``MIND.item_vectors()``
   (``flat`` exact, ``ivf``, ``hnsw``, ``ivfpq``) for its top N, never returning the padding
   item 0 and, unless told otherwise, none of the user's own history;
3. merges the candidates of a user's interests, scoring each candidate exactly by the model's
   serving score max_j v_u^j . e_i over the active interests, removes duplicates and keeps the
   top N. With ``flat`` this equals the top N of ``full_sort_predict``.

Everything after the model forward is vectorised over all users (numpy/torch); the only loops
are over chunks of rows and over the rare search rounds that need a deeper list (see
:func:`search_interests`).
"""

import math
import os
from dataclasses import dataclass, fields

import numpy as np
import torch

from recbole_mind.checkpoint import load_checkpoint as load_trusted_checkpoint
from recbole_mind.errors import UserError
from recbole_mind.files import atomic_write

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
def history_keys(users, items, n_items):
    """Sorted int64 keys ``user * n_items + item``: a vectorised membership table."""
    return np.unique(np.asarray(users, dtype=np.int64) * n_items + np.asarray(items, dtype=np.int64))


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
        exclude: sorted keys from :func:`history_keys` over (query row u, item) or ``None``.

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


def merge_candidates(interests, mask, item_vectors, candidates, topn, chunk=2048):
    """Exact max-interest scores of each user's candidates, duplicates removed, top ``topn``.

    Args:
        interests: float32 [U, K, d]; mask: bool [U, K]; item_vectors: float32 [n_items, d].
        candidates: int64 [U, K, C] (-1 = none).

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
        scores = scores.masked_fill(~mask[start:start + chunk].unsqueeze(-1), float("-inf")).amax(dim=1)
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
             built_index=None):
    """Top-``topn`` items per user by max-interest score through a faiss index.

    Args:
        interests: float32 [U, K, d] interest vectors; mask: bool [U, K] active interests.
        item_vectors: float32 [n_items, d]; row 0 is the padding item and is never returned.
        index: one of ``INDEX_TYPES`` (ignored when ``built_index`` is given).
        exclude: sorted keys (query row, item) from :func:`history_keys`, or ``None``.
        built_index: reuse an index made by :func:`build_index` over ``item_vectors[1:]``.

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
    return merge_candidates(interests, mask, item_vectors, candidates, topn)


# --------------------------------------------------------------------------- model side
def load_checkpoint(path, data_path=None):
    """(config, dataset, model) from a RecBole checkpoint of MIND, on the CPU in eval mode.

    The checkpoint is a pickle (RecBole saves its Config object in it): loading it executes
    code from the file, so load only checkpoints you trust, from the path you name
    (:mod:`recbole_mind.checkpoint`). The dataset is rebuilt from the saved
    config with :func:`recbole_mind.quick_start.prepare_data`; ``data_path`` overrides the
    saved one when the data moved.
    """
    from recbole.utils import init_seed

    from recbole_mind import quick_start
    from recbole_mind.mind import MIND

    checkpoint = load_trusted_checkpoint(path)
    config = checkpoint["config"]
    if quick_start.resolve_model(config["model"]) is not MIND:
        raise UserError(f"{path} holds a {config['model']} model: retrieval and export need a MIND checkpoint")
    if data_path is not None:
        config["data_path"] = os.path.join(data_path, config["dataset"])
    config["device"] = torch.device("cpu")
    init_seed(config["seed"], config["reproducibility"])
    dataset, _, _, _ = quick_start.prepare_data(config)
    model = MIND(config, dataset)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, dataset, model.eval()


def user_histories(dataset, max_len):
    """Every user's query sequence and full history, from the dataset's sequential rows.

    RecBole's sequential dataset holds one row per interaction after a user's first: the target
    ``item_id`` and the (at most ``max_len``) items before it. A user's last row plus its target
    is the last items of the full history; users with a single interaction have no row and are
    left out.

    Returns:
        (users int64 [U], item_seq int64 [U, max_len] right-padded with 0, item_seq_len int64
        [U], history: sorted keys (row in ``users``, item) of every item the user interacted with)
    """
    feat = dataset.inter_feat
    uid = feat[dataset.uid_field].numpy()
    order = np.argsort(uid, kind="stable")  # rows are in time order within a user
    uid = uid[order]
    target = feat[dataset.iid_field].numpy()[order]
    seq = feat[dataset.item_id_list_field].numpy()[order]
    seq_len = feat[dataset.item_list_length_field].numpy()[order]
    starts = np.flatnonzero(np.r_[True, uid[1:] != uid[:-1]])
    ends = np.r_[starts[1:], len(uid)] - 1
    users = uid[starts]
    rows = np.arange(len(users))

    # last row's list + its target, keeping the last max_len items
    last_seq = np.zeros((len(users), max_len + 1), dtype=np.int64)
    width = seq.shape[1]
    last_seq[:, :width] = seq[ends]
    last_len = seq_len[ends].astype(np.int64)
    last_seq[rows, last_len] = target[ends]
    last_len = last_len + 1
    full = last_len > max_len
    last_seq[full, :max_len] = last_seq[full, 1:]
    item_seq = np.ascontiguousarray(last_seq[:, :max_len])
    item_seq_len = np.minimum(last_len, max_len)

    # full history: every target, plus the first item (the first row's list starts with it)
    row_of_user = np.repeat(rows, ends - starts + 1)
    history = history_keys(np.r_[row_of_user, rows], np.r_[target, seq[starts, 0]], dataset.item_num)
    return users, item_seq, item_seq_len, history


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
def retrieve_for_dataset(model, dataset, topn=50, index="flat", params=None, exclude_history=True):
    """Recommendations for every user of ``dataset`` with at least two interactions.

    Returns:
        (users int64 [U], items int64 [U, topn], scores float32 [U, topn]) in internal ids.
    """
    users, item_seq, item_seq_len, history = user_histories(dataset, model.max_seq_length)
    interests, mask = user_interests(model, users, item_seq, item_seq_len)
    item_vectors = model.item_vectors().float().numpy()
    items, scores = retrieve(interests, mask, item_vectors, topn, index, params,
                             exclude=history if exclude_history else None)
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


# --------------------------------------------------------------------------- CLI mode
def add_arguments(parser):
    group = parser.add_argument_group(
        "retrieval and export (with --checkpoint; the checkpoint is unpickled, which runs code: "
        "load only files you trust)")
    group.add_argument("--retrieve", action="store_true", help="write top-k recommendations of every user")
    group.add_argument("--export", metavar="PATH", default=None,
                       help="export the user tower (item_seq, item_seq_len, user_id -> interests, mask) "
                            "as a torch.export program (.pt2)")
    group.add_argument("--checkpoint", metavar="PATH", default=None, help="a saved/MIND-*.pth checkpoint")
    # --topk is also RecBole's evaluation key: kept as text here and handed back as a config
    # override when neither mode is selected (see selected/main).
    group.add_argument("--topk", dest="retrieve_topk", metavar="N", default=None,
                       help="recommendations per user when retrieving (default 50); otherwise "
                            "RecBole's topk, e.g. --topk=[10,20]")
    group.add_argument("--index", choices=INDEX_TYPES, default="flat", help="faiss index (default flat, exact)")
    group.add_argument("--output", metavar="PATH", default="recs.csv", help="recommendations CSV (default recs.csv)")
    group.add_argument("--keep_history", action="store_true",
                       help="allow items the user already interacted with (default: removed); retrieval "
                            "scores the raw interests, so this holds even for a model trained with "
                            "exclude_history")
    defaults = IndexParams()
    for field in fields(IndexParams):
        group.add_argument(f"--{field.name}", type=field.type, default=None,
                           help=f"index parameter (default {getattr(defaults, field.name) or 'auto'})")


def selected(args):
    # True as well for a bare --topk, whose main hands it back to RecBole as an override.
    return bool(args.retrieve or args.export or args.retrieve_topk is not None)


def main(args, overrides):
    from recbole_mind import cli

    if not (args.retrieve or args.export):
        overrides = dict(overrides, topk=args.retrieve_topk)
        args.retrieve_topk = None
        return cli.run_from_args(args, overrides)
    unknown = sorted(set(overrides) - {"data_path"})
    if unknown:
        raise UserError(f"--{unknown[0]} cannot change a trained model: retrieval and export accept "
                        f"only --data_path=... besides their own flags")
    if not args.checkpoint:
        raise UserError("--retrieve and --export need --checkpoint saved/MIND-*.pth")
    topn = _positive_int(args.retrieve_topk or "50", "--topk")
    params = IndexParams(**{f.name: getattr(args, f.name) for f in fields(IndexParams)
                            if getattr(args, f.name) is not None})
    for field in fields(IndexParams):
        value = getattr(params, field.name)
        if field.type is int and value is not None and value < 1:
            raise UserError(f"--{field.name} must be >= 1, got {value}")
    _, dataset, model = load_checkpoint(args.checkpoint, overrides.get("data_path"))
    if args.export:
        from recbole_mind.export import export_user_tower

        export_user_tower(model, dataset, args.export)
        print(f"exported the user tower to {args.export}")
    if args.retrieve:
        users, items, scores = retrieve_for_dataset(model, dataset, topn, args.index, params,
                                                    exclude_history=not args.keep_history)
        n_rows = write_recommendations(args.output, dataset, users, items, scores)
        print(f"wrote {n_rows} recommendations for {len(users)} users to {args.output} "
              f"(index {args.index}, top {topn})")


def _positive_int(text, flag):
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{flag} must be a whole number of recommendations, got {text!r}") from None
    if value < 1:
        raise UserError(f"{flag} must be >= 1, got {value}")
    return value


__all__ = ["INDEX_TYPES", "IndexParams", "MipsHNSW", "build_index", "retrieve", "search_interests", "merge_candidates",
           "load_checkpoint", "user_histories", "user_interests", "retrieve_for_dataset",
           "write_recommendations", "history_keys", "add_arguments", "selected", "main"]
