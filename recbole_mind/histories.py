"""Every user's time-ordered history, rebuilt from RecBole's sequential rows.

A sequential dataset holds one row per interaction after a user's first: the target ``item_id``
and the (at most MAX_ITEM_LIST_LENGTH) items before it. The multi-target protocol splits whole
histories; retrieval and export serve each user from the end of theirs.
"""

import numpy as np


def full_histories(dataset):
    """(users [U], lengths [U], items): every user's whole time-ordered history, ``items``
    concatenated user after user (a user's rows are its targets in time order; the first row's
    list starts with the first item). Users with a single interaction have no row and are left out."""
    feat = dataset.inter_feat
    uid = feat[dataset.uid_field].numpy()
    order = np.argsort(uid, kind="stable")  # rows are in time order within a user
    uid = uid[order]
    target = feat[dataset.iid_field].numpy()[order]
    first = feat[dataset.item_id_list_field].numpy()[order][:, 0]
    starts = np.flatnonzero(np.r_[True, uid[1:] != uid[:-1]])
    lengths = np.diff(np.r_[starts, len(uid)]) + 1
    return uid[starts], lengths, np.insert(target, starts, first[starts])


def history_keys(users, items, n_items):
    """Sorted int64 keys ``user * n_items + item``: a vectorised membership table."""
    return np.unique(np.asarray(users, dtype=np.int64) * n_items + np.asarray(items, dtype=np.int64))


def user_histories(dataset, max_len):
    """Every user's query sequence (the last ``max_len`` items of the whole history) and history.

    Returns:
        (users int64 [U], item_seq int64 [U, max_len] right-padded with 0, item_seq_len int64
        [U], history: sorted keys (row in ``users``, item) of every item the user interacted with)
    """
    users, lengths, items = full_histories(dataset)
    offsets = np.r_[0, np.cumsum(lengths)[:-1]]
    item_seq_len = np.minimum(lengths, max_len).astype(np.int64)
    start = offsets + lengths - item_seq_len
    steps = np.arange(max_len)[None, :]
    inside = steps < item_seq_len[:, None]
    item_seq = np.where(inside, items[np.minimum(start[:, None] + steps, len(items) - 1)], 0).astype(np.int64)
    history = history_keys(np.repeat(np.arange(len(users)), lengths), items, dataset.item_num)
    return users, np.ascontiguousarray(item_seq), item_seq_len, history
