"""The later items of a training row's own user, for ``future_targets`` (not in the paper).

A training row of RecBole's sequential datasets is a prefix of one user's history and the item
that follows it. With ``future_targets: M`` MIND also trains each row to retrieve the user's next
M items after that label, as PinnerFormer's dense all-action loss does (Pancha et al., KDD 2022:
a representation that serves a later period learns from every action in a window after it, not
only the next). Several later items of one user span more of their interests than one, and the
label-aware attention routes each to the interest that explains it best.

The later items come from the training rows themselves: RecBole keeps a sequential dataset's
rows in (user, time) order, so row r's later items are the labels of rows r + 1 .. r + M while
they belong to the same user. Only training rows are read, so nothing of a user's validation or
test items reaches training.
"""

import torch

from recbole.data.interaction import Interaction

FIELD_SUFFIX = "_future_list"


def future_field(item_field):
    """Name of the [N, M] field of later labels added to the training rows."""
    return item_field + FIELD_SUFFIX


def later_labels(users, labels, count):
    """[N, count]: for each row, the labels of the next ``count`` rows of the same user, 0 where
    the user has fewer. ``users`` and ``labels`` are the rows' [N] user and label ids, each
    user's rows contiguous and in time order. A loop over ``count`` only."""
    n = users.size(0)
    later = torch.zeros(n, count, dtype=labels.dtype)
    for step in range(1, count + 1):
        if step >= n:
            break
        same_user = users[step:] == users[:-step]
        later[:-step, step - 1] = labels[step:] * same_user
    return later


def attach(dataset, item_field, user_field, count):
    """Adds the [N, count] later labels to ``dataset``'s rows as field ``future_field(item_field)``
    (the training loader slices every field of the rows into its batches).

    Raises:
        ValueError: the rows are not grouped by user (each user's rows one contiguous block).
    """
    rows = dataset.inter_feat
    users, labels = rows[user_field].long(), rows[item_field].long()
    boundaries = int((users[1:] != users[:-1]).sum()) + 1 if len(users) else 0
    if boundaries != int(torch.unique(users).numel()):
        raise ValueError("future_targets needs the training rows grouped by user, in time order "
                         "(RecBole's sequential datasets keep them so)")
    rows.update(Interaction({future_field(item_field): later_labels(users, labels, count)}))
