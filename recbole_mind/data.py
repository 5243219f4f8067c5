"""The dataset of a run: fetched if RecBole knows it, checked, then loaded by RecBole.

Also each user's query sequence as served after everything in the data (retrieval, export).
"""

import numpy as np
from recbole.data import create_dataset, data_preparation

from recbole_mind import multi_target
from recbole_mind.checks import check_dataset_files
from recbole_mind.download import ensure_dataset
from recbole_mind.model import MIND
from recbole_mind.model.hyper_parameters import read_hyper_parameters


def check_data(config):
    """Download the dataset if needed and check its atomic files (UserError if unusable)."""
    ensure_dataset(config["dataset"], config["data_path"], url=config["dataset_url"],
                   timeout=config["download_timeout"] or 30, show_progress=bool(config["show_progress"]))
    features = None
    model_class = getattr(config, "model_class", None)
    if isinstance(model_class, type) and issubclass(model_class, MIND):
        hp = read_hyper_parameters(config)
        features = {"user": hp.user_features, "item": hp.item_features}
    check_dataset_files(config, features)


def load_data(config):
    """(dataset, train, valid, test) loaders of the run's protocol: RecBole's create_dataset and
    data_preparation for leave-one-out; :func:`multi_target.prepare` for multi_target, whose
    test loader also carries ``split`` (the user split as recorded)."""
    if config["eval_protocol"] == multi_target.NAME:
        prepared = multi_target.prepare(config)
        prepared.test_data.split = prepared.split
        return prepared.dataset, prepared.train_data, prepared.valid_data, prepared.test_data
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    return dataset, train_data, valid_data, test_data


def prepare_data(config):
    """:func:`check_data`, then :func:`load_data`."""
    check_data(config)
    return load_data(config)


def history_keys(users, items, n_items):
    """Sorted int64 keys ``user * n_items + item``: a vectorised membership table."""
    return np.unique(np.asarray(users, dtype=np.int64) * n_items + np.asarray(items, dtype=np.int64))


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
