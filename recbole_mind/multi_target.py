"""The multi-target protocol: held-out users, the first 80% of a history in, the rest to retrieve.

Multi-interest models are evaluated this way in ComiRec (Cen et al., KDD 2020) and REMI (Xie et
al., RecSys 2023): the users are split at random into train, valid and test users (8:1:1,
seeded); the model trains on RecBole's usual prefix -> next-item rows of the train users only;
each valid and test user is one evaluation row whose input is the first 80% of the user's
time-ordered behaviours (the last MAX_ITEM_LIST_LENGTH of them) and whose targets are the rest,
a set that spans the user's interests. Ranking is over all items with the input sequence's items
removed, for every model. Recall@N (hits / |targets|), NDCG@N (ideal DCG over min(|targets|, N))
and Hit@N are RecBole's own metrics, which count several positives per row; Diversity@N is
computed from the lists (``categories.diversity``).

:func:`prepare` builds RecBole's loaders for it; RecBole's Trainer trains and evaluates them as
it does its own.
"""

import hashlib
from collections import namedtuple

import numpy as np
import torch
from recbole.data import create_dataset
from recbole.data.dataloader import FullSortEvalDataLoader, TrainDataLoader
from recbole.data.interaction import Interaction
from recbole.data.utils import create_samplers

from recbole_mind.categories import diversity, genre_field, item_categories
from recbole_mind.errors import UserError
from recbole_mind.histories import full_histories

NAME = "multi_target"
SPLIT_SHARES = (0.8, 0.1, 0.1)  # train, valid, test users


def split_users(users, seed):
    """(train, valid, test): the sorted ``users`` drawn at random, seeded, 8:1:1."""
    users = np.sort(np.asarray(users))
    order = np.random.default_rng(seed).permutation(len(users))
    n_train = int(round(SPLIT_SHARES[0] * len(users)))
    n_valid = int(round(SPLIT_SHARES[1] * len(users)))
    picked = users[order]
    return (np.sort(picked[:n_train]), np.sort(picked[n_train:n_train + n_valid]),
            np.sort(picked[n_train + n_valid:]))


def evaluation_rows(histories, users, max_len, n_items):
    """Inputs and targets of the evaluation users.

    Returns:
        (users [R], item_seq [R, max_len] right-padded, item_seq_len [R], targets [R, T] padded
        with 0, dropped): the input is the first floor(0.8 n) behaviours of a history of n (its
        last ``max_len``), the targets the distinct later items that are not in the input. Users
        left with no target are dropped and counted.
    """
    all_users, lengths, items = histories
    pick = np.isin(all_users, users)
    offsets = np.r_[0, np.cumsum(lengths)[:-1]][pick]
    users, lengths = all_users[pick], lengths[pick]
    k = (4 * lengths) // 5  # floor(0.8 n) exactly; >= 1 for n >= 2
    start = np.maximum(k - max_len, 0)
    steps = np.arange(max_len)[None, :]
    in_input = steps < (k - start)[:, None]
    item_seq = np.where(in_input, items[(offsets + start)[:, None] + np.minimum(steps, (k - start - 1)[:, None])], 0)
    width = int((lengths - k).max()) if len(users) else 1
    later = np.arange(width)[None, :] < (lengths - k)[:, None]
    targets = np.where(later, items[(offsets + k)[:, None] + np.minimum(np.arange(width)[None, :],
                                                                         (lengths - k - 1)[:, None])], 0)
    rows = np.arange(len(users))[:, None]
    seen = np.isin(rows * n_items + targets, (rows * n_items + item_seq)[in_input])
    targets = np.where(seen, 0, targets)
    targets = _distinct(targets)
    keep = (targets > 0).any(axis=1)
    return (users[keep], item_seq[keep], (k - start)[keep], targets[keep], int((~keep).sum()))


def _distinct(targets):
    """Each row's repeated items set to 0, rows then left-packed (zeros last)."""
    ordered = np.sort(targets, axis=1)
    repeat = np.zeros_like(ordered, dtype=bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    ordered = np.where(repeat, 0, ordered)
    return -np.sort(-ordered, axis=1)


class MultiTargetEvalLoader(FullSortEvalDataLoader):
    """RecBole's full-sort evaluation loader over one row per held-out user, with several
    positives per row and the row's input sequence removed from the ranking."""

    def __init__(self, config, dataset, users, item_seq, item_seq_len, targets):
        self.targets = torch.as_tensor(targets)
        rows = Interaction({
            dataset.uid_field: torch.as_tensor(users),
            dataset.item_id_list_field: torch.as_tensor(item_seq),
            dataset.item_list_length_field: torch.as_tensor(item_seq_len),
            dataset.iid_field: self.targets[:, 0].clone(),  # a label for models that ask for one
        })
        super().__init__(config, dataset.copy(rows), None, shuffle=False)

    def input_items(self, interaction):
        """(rows, items) of each row's input sequence: what the protocol removes from its ranking."""
        seq = interaction[self._dataset.item_id_list_field]
        rows, columns = torch.nonzero(seq > 0, as_tuple=True)
        return rows, seq[rows, columns]

    def collate_fn(self, index):
        index = np.array(index)
        interaction = self.transform(self._dataset, self._dataset[index])
        positive_u, column = torch.nonzero(self.targets[index] > 0, as_tuple=True)
        positive_i = self.targets[index][positive_u, column]
        return interaction, self.input_items(interaction), positive_u, positive_i


Prepared = namedtuple("Prepared", "dataset train_data valid_data test_data split")


def prepare(config):
    """RecBole's dataset and the protocol's (train, valid, test) loaders; ``split`` records the
    seed, the users of each part (external ids) and the users left out."""
    dataset = create_dataset(config)
    dataset._change_feat_format()  # RecBole's prefix -> next-item rows (what Dataset.build does first)
    histories = full_histories(dataset)
    users = histories[0]
    seed = config["split_seed"] if config["split_seed"] is not None else config["seed"]
    train_users, valid_users, test_users = split_users(users, seed)
    if not len(valid_users) or not len(test_users):
        raise UserError(f"dataset {config['dataset']} has {len(users)} users with two or more interactions: "
                        "the multi-target protocol needs at least 10")
    uid = dataset.inter_feat[dataset.uid_field].numpy()
    train_dataset = dataset.copy(dataset.inter_feat[torch.from_numpy(np.isin(uid, train_users))])
    max_len, n_items = config["MAX_ITEM_LIST_LENGTH"], dataset.item_num
    valid_rows = evaluation_rows(histories, valid_users, max_len, n_items)
    test_rows = evaluation_rows(histories, test_users, max_len, n_items)
    valid_data = MultiTargetEvalLoader(config, dataset, *valid_rows[:4])
    test_data = MultiTargetEvalLoader(config, dataset, *test_rows[:4])
    train_sampler, _, _ = create_samplers(config, dataset, [train_dataset, valid_data._dataset, test_data._dataset])
    train_data = TrainDataLoader(config, train_dataset, train_sampler, shuffle=config["shuffle"])
    single = int(dataset.user_num - 1 - len(users))  # users with one interaction: no input and target
    split = {
        "seed": int(seed),
        "users": {"train": len(train_users), "valid": len(valid_rows[0]), "test": len(test_rows[0]),
                  "left_out_one_interaction": single,
                  "left_out_no_new_target": valid_rows[4] + test_rows[4]},
        "valid_users": _tokens(dataset, valid_rows[0]),
        "test_users": _tokens(dataset, test_rows[0]),
    }
    split["sha256"] = hashlib.sha256(" ".join(split["valid_users"] + ["|"] + split["test_users"]).encode()).hexdigest()
    return Prepared(dataset, train_data, valid_data, test_data, split)


def _tokens(dataset, users):
    return [str(t) for t in dataset.id2token(dataset.uid_field, users)]


@torch.no_grad()
def top_lists(model, eval_data, n, device="cpu"):
    """(interaction, top-n items [rows, n]) for each batch of ``eval_data``: the model's full
    ranking with the padding item and each row's input sequence removed, as the evaluation ranks."""
    model.eval()
    with torch.no_grad():
        for interaction, (rows, items), _, _ in eval_data:
            scores = model.full_sort_predict(interaction.to(device)).view(len(interaction), -1).clone()
            scores[:, 0] = -np.inf
            scores[rows, items] = -np.inf
            yield interaction, scores.topk(n, dim=1).indices.cpu()


def list_metrics(model, eval_data, labels, topk, device="cpu"):
    """{'diversity@N': ...} of the model's top-N lists on ``eval_data`` (the input sequence
    removed, as in the evaluation), for every N in ``topk``."""
    top = torch.cat([lists for _, lists in top_lists(model, eval_data, max(topk), device)])
    return {f"diversity@{n}": diversity(top[:, :n], labels) for n in topk}


def categories(config, dataset, train_data):
    """(labels, description) for Diversity@N: the .item genre field where it was loaded, else
    co-occurrence clusters of the train users' interactions."""
    train = train_data._dataset.inter_feat
    return item_categories(dataset, genre_field(config, dataset), users=train[dataset.uid_field].numpy(),
                           items=train[dataset.iid_field].numpy())
