"""Item categories: genres where the data has them, item co-occurrence clusters everywhere.

They label behaviours for explaining the interests (purity) and recommendation lists for the
multi-target protocol's Diversity@N.
"""

import os

import numpy as np
import torch

# .item columns read as categories when the dataset has one (ml-100k: class, its genres).
GENRE_FIELDS = ("class", "genre", "genres", "categories")
CLUSTERS = 20  # co-occurrence clusters (ml-100k has 19 genres)
CLUSTER_DIM = 32  # singular vectors used for the clustering


def item_header(data_path, dataset, separator="\t", encoding="utf-8"):
    """Field names of the dataset's .item atomic file (empty when there is none)."""
    path = os.path.join(data_path, f"{dataset}.item")
    if not os.path.isfile(path):
        return []
    with open(path, encoding=encoding) as f:
        return [column.split(":")[0] for column in f.readline().rstrip("\n").split(separator)]


def genre_field(config, dataset=None):
    """The dataset's genre column (GENRE_FIELDS) in its .item file, or None; with ``dataset``,
    only if that dataset loaded it."""
    header = item_header(config["data_path"], config["dataset"], config["field_separator"] or "\t",
                         config["encoding"] or "utf-8")
    field = next((field for field in GENRE_FIELDS if field in header), None)
    if dataset is not None and (dataset.item_feat is None or field not in dataset.item_feat.columns):
        return None
    return field


def token_labels(values, n_tokens):
    """[n_items, n_tokens - 1] fractional label matrix from a token or token_seq column.

    Token 0 (padding) is dropped; each row sums to 1 over its tokens, or 0 if it has none.
    """
    values = values.long()
    if values.dim() == 1:
        values = values.unsqueeze(-1)
    counts = torch.zeros(values.size(0), n_tokens).scatter_add_(1, values, torch.ones(values.shape))[:, 1:]
    return counts / counts.sum(dim=1, keepdim=True).clamp(min=1)


def cooccurrence_clusters(users, items, n_users, n_items, clusters=CLUSTERS, dim=CLUSTER_DIM, seed=0):
    """Cluster of every item from the user-item matrix alone ([n_items], -1 for unseen items).

    Regularised spectral co-clustering: SVD of (D_u + tau_u)^-1/2 X (D_i + tau_i)^-1/2 (X binary
    users x items, tau the mean degree), drop the first (degree) singular vector, normalise the
    item rows, k-means. The regularisation matters: without it every small connected component
    (amazon-videogames has hundreds) adds a singular value of exactly 1, the top vectors span an
    arbitrary part of that tie and the clusters change from run to run. Cheap: one sparse svds.
    """
    import scipy.sparse as sp
    from scipy.cluster.vq import kmeans2
    from scipy.sparse.linalg import svds

    x = sp.csr_matrix((np.ones(len(users)), (users, items)), shape=(n_users, n_items))
    x.data[:] = 1.0  # repeated interactions count once
    du = np.asarray(x.sum(axis=1)).ravel()
    di = np.asarray(x.sum(axis=0)).ravel()
    tau_u, tau_i = du[du > 0].mean(), di[di > 0].mean()
    scaled = sp.diags(1 / np.sqrt(du + tau_u)) @ x @ sp.diags(1 / np.sqrt(di + tau_i))
    k = min(dim + 1, min(scaled.shape) - 1)
    _, s, vt = svds(scaled, k=k, random_state=seed)
    order = np.argsort(-s)[1:]  # the top vector follows the degrees: it carries no cluster
    vectors = vt[order].T * s[order]
    seen = di > 0
    vectors = vectors[seen] / np.maximum(np.linalg.norm(vectors[seen], axis=1, keepdims=True), 1e-12)
    _, label = kmeans2(vectors, clusters, minit="++", seed=seed)
    cluster = np.full(n_items, -1)
    cluster[np.nonzero(seen)[0]] = label
    return cluster


def item_categories(dataset, field=None, users=None, items=None, seed=0):
    """([n_items, G] fractional category matrix, a description).

    With ``field`` (a loaded token / token_seq column of the .item file) the categories are its
    tokens; otherwise co-occurrence clusters of ``users`` x ``items`` (the interactions to learn
    them from; default: all of the dataset's).
    """
    if field is not None:
        values = dataset.get_item_feature()[field]
        return token_labels(values, len(dataset.field2id_token[field])), f"the .item field '{field}'"
    if users is None:
        users = dataset.inter_feat[dataset.uid_field].numpy()
        items = dataset.inter_feat[dataset.iid_field].numpy()
    cluster = cooccurrence_clusters(users, items, dataset.user_num, dataset.item_num, seed=seed)
    return cluster_labels(cluster), f"{CLUSTERS} item co-occurrence clusters (the data has no category field)"


def cluster_labels(cluster, clusters=CLUSTERS):
    """[n_items, clusters] one-hot label matrix of a cluster per item (-1: none, a zero row)."""
    labels = torch.zeros(len(cluster), clusters)
    known = cluster >= 0
    labels[torch.from_numpy(np.nonzero(known)[0]), torch.from_numpy(cluster[known])] = 1.0
    return labels


def diversity(top_items, labels):
    """Mean over users of the share of item pairs in a list that share no category (ComiRec's
    Diversity@N: for single-category items, the pairs from different categories).

    Args:
        top_items: [U, N] item ids (each user's list).
        labels: [n_items, G] category matrix (a row's non-zero entries are the item's categories).
    """
    n = top_items.size(1)
    if n < 2:
        return float("nan")
    present = (labels[top_items] > 0).float()  # [U, N, G]
    shared = torch.einsum("ung,umg->unm", present, present) > 0  # [U, N, N]
    pairs = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    different = (~shared & pairs).sum(dim=(1, 2)).float() / pairs.sum()
    return float(different.mean())
