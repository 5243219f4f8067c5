"""Repeat consumption in a dataset, and what ``exclude_history: auto`` makes of it.

The repeat share of a RecBole sequential dataset is the share of its rows (prefix -> next item)
whose label is one of the row's own input items. ``exclude_history`` (docs/model.md) removes
those items from the training softmax and the ranking: a large gain where nothing is consumed
twice, and a loss of every right answer that is a repeat where much is. ``auto`` measures the
share on the training rows before training and keeps the filter on below REPEAT_SHARE_THRESHOLD.
"""

from collections import namedtuple

# Where the filter stops paying (results/repeats/threshold.md: MIND with the filter on and off on
# ml-100k with injected repeats): with the filter on, NDCG@10 leads up to a repeat share of 0.23
# and trails from 0.32; Recall@50 leads up to 0.09 and trails from 0.17. 0.2 lies between the two
# crossings; at 0.165 on is +40% NDCG@10 and -7% Recall@50.
REPEAT_SHARE_THRESHOLD = 0.2

ExcludeHistory = namedtuple("ExcludeHistory", "on setting repeat_share")


def repeat_share(dataset, chunk=65536):
    """Share of ``dataset``'s rows whose label is among their input items (0.0 for no rows).

    ``dataset`` is a RecBole SequentialDataset after data_preparation (its inter_feat holds the
    ITEM_SEQ field and the label), e.g. ``train_data._dataset``.
    """
    items = dataset.inter_feat[dataset.iid_field]
    sequences = dataset.inter_feat[dataset.iid_field + dataset.config["LIST_SUFFIX"]]
    if len(items) == 0:
        return 0.0
    repeats = 0
    for start in range(0, len(items), chunk):  # chunks bound the [rows, L] comparison's memory
        label = items[start:start + chunk].unsqueeze(1)
        repeats += int((sequences[start:start + chunk] == label).any(dim=1).sum())
    return repeats / len(items)


def parse_setting(value):
    """``exclude_history`` as given (yaml or command line): 'auto', True or False."""
    if isinstance(value, str) and value.lower() in ("auto", "true", "false"):
        return {"auto": "auto", "true": True, "false": False}[value.lower()]
    if isinstance(value, bool):
        return value
    raise ValueError(value)


parse_setting.__name__ = "auto, True or False"


def resolve_exclude_history(setting, dataset):
    """ExcludeHistory(on, setting, repeat_share): the share is measured on ``dataset`` for every
    setting (the run record reports it), and decides ``on`` when the setting is 'auto'."""
    share = repeat_share(dataset)
    on = share < REPEAT_SHARE_THRESHOLD if setting == "auto" else bool(setting)
    return ExcludeHistory(on, setting, share)


def describe(choice):
    """The one log line a run starts with."""
    why = (f"auto: {'below' if choice.on else 'at or above'} the threshold {REPEAT_SHARE_THRESHOLD}"
           if choice.setting == "auto" else f"set to {choice.setting}")
    return (f"exclude_history {'on' if choice.on else 'off'}: {choice.repeat_share:.1%} of the training rows' "
            f"labels repeat an item of their own input sequence ({why})")


def record(choice):
    """The choice as plain values for a run record."""
    return {"on": bool(choice.on), "setting": choice.setting, "repeat_share": float(choice.repeat_share),
            "threshold": REPEAT_SHARE_THRESHOLD}
