"""Checks of user input that RecBole would otherwise meet with a traceback deep in its code.

Each check raises :class:`recbole_mind.errors.UserError` with one line naming the problem and the fix.
"""

import os

import pandas as pd
import yaml
from recbole.utils import FeatureType

from recbole_mind.errors import UserError

_TYPES = {t.value for t in FeatureType}


def check_config_files(paths):
    """Each config file exists and holds a YAML mapping."""
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"config file {path} does not exist: check the path given to --config_files")
        try:
            with open(path, encoding="utf-8") as f:
                content = yaml.safe_load(f)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise UserError(f"config file {path} is not valid YAML{where}: write it as 'key: value' lines") from None
        except UnicodeDecodeError:
            raise UserError(f"config file {path} is not a text YAML file: give a .yaml config") from None
        if content is not None and not isinstance(content, dict):
            raise UserError(f"config file {path} is YAML but not a mapping of keys: write it as 'key: value' lines")


def check_run_config(config):
    """Keys every sequential model needs that RecBole does not check itself."""
    length = config["MAX_ITEM_LIST_LENGTH"]
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise UserError(f"MAX_ITEM_LIST_LENGTH must be an integer >= 1, got {length!r}")
    multi_target = config["eval_protocol"] == "multi_target"
    seed, lam = config["split_seed"], config["diversity_lambda"]
    for key, value in (("split_seed", seed), ("diversity_lambda", lam)):
        if value is not None and not multi_target:
            raise UserError(f"{key} belongs to the multi-target protocol: add --eval_protocol=multi_target, or drop it")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise UserError(f"split_seed must be a whole number >= 0 (or ~ for the run's seed), got {seed!r}")
    if lam is not None and (not isinstance(lam, (int, float)) or isinstance(lam, bool) or not lam >= 0):
        raise UserError(f"diversity_lambda must be a number >= 0 (0: lists by score), got {lam!r}")
    metric, _, cutoff = str(config["valid_metric"] or "").partition("@")
    topk = config["topk"] if isinstance(config["topk"], list) else [config["topk"]]
    if cutoff and cutoff.isdigit() and int(cutoff) not in topk:
        raise UserError(f"valid_metric {config['valid_metric']} needs {cutoff} in topk {topk}: add it, or "
                        f"validate on one of " + ", ".join(f"{metric}@{k}" for k in topk))


def _header(path, separator):
    with open(path, encoding="utf-8") as f:
        return f.readline().rstrip("\r\n").split(separator)


def check_atomic_file(path, separator="\t", required=()):
    """The header of an atomic file reads ``name:type`` per column, with the required names,
    and its float columns hold numbers."""
    fields = {}
    for column in _header(path, separator):
        name, colon, ftype = column.partition(":")
        if not colon or ftype not in _TYPES:
            raise UserError(
                f"{path}: header column {column!r} is not 'name:type' with type one of "
                f"{', '.join(sorted(_TYPES))}; fix the first line of the file"
            )
        fields[name] = ftype
    for name in required:
        if name not in fields:
            raise UserError(f"{path}: no '{name}' column in the header {list(fields)}; "
                            f"add it or set the matching *_FIELD key")
    float_columns = [f"{n}:{t}" for n, t in fields.items() if t == FeatureType.FLOAT.value]
    if float_columns:
        frame = pd.read_csv(path, sep=separator, usecols=float_columns, dtype=str, keep_default_na=False)
        for column in float_columns:
            values = frame[column]
            bad = values[(values != "") & pd.to_numeric(values, errors="coerce").isna()]
            if len(bad):
                raise UserError(
                    f"{path}: column {column} has a non-numeric value {bad.iloc[0]!r} on line "
                    f"{bad.index[0] + 2}; fix the value or declare the column :token"
                )
    return fields


def check_interactions(config, path, separator, columns):
    """The .inter file has interactions, no empty user or item id, a user with enough of them for
    the protocol to train on, and at least as many items as the largest topk."""
    frame = pd.read_csv(path, sep=separator, usecols=list(columns.values()), dtype=str, keep_default_na=False)
    if not len(frame):
        raise UserError(f"{path} has a header but no interactions: add one line per (user, item) interaction")
    for name, column in columns.items():
        empty = frame.index[frame[column].str.strip() == ""]
        if len(empty):
            raise UserError(f"{path}: line {empty[0] + 2} has an empty {name}: fill it in or remove the line")
    user, item = columns[config["USER_ID_FIELD"]], columns[config["ITEM_ID_FIELD"]]
    most = int(frame[user].value_counts().max())
    needed = 2 if config["eval_protocol"] == "multi_target" else 4
    if most < needed:
        why = ("the multi-target protocol needs users with an input and a target" if needed == 2 else
               "leave-one-out tests on a user's last item, validates on the one before and trains on "
               "predicting the earlier ones from the first: four at least")
        raise UserError(f"{path}: no user has more than {most} interaction{'s' * (most > 1)}, too few to "
                        f"train and evaluate ({why}): use data with longer user histories")
    topk = config["topk"] if isinstance(config["topk"], list) else [config["topk"]]
    items = frame[item].nunique()
    if max(topk) > items:
        raise UserError(f"topk {topk} asks for {max(topk)} items but {path} has {items}: lower topk, e.g. "
                        f"--topk=[{min(10, items)}]")


def check_dataset_files(config, features=None):
    """The dataset's .inter (and any .user/.item RecBole will read) are well-formed, and hold
    ``features`` ({"user": [...], "item": [...]}, MIND's profile and side features)."""
    features = features or {}
    folder, name = config["data_path"], config["dataset"]
    separator = config["field_separator"] or "\t"
    inter = os.path.join(folder, f"{name}.inter")
    if not os.path.isfile(inter):
        raise UserError(f"no {name}.inter in {folder}: put the dataset's RecBole atomic files there")
    required = [config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]]
    fields = check_atomic_file(inter, separator, required)
    check_interactions(config, inter, separator, {name: f"{name}:{fields[name]}" for name in required})
    for suffix, id_field in (("user", "USER_ID_FIELD"), ("item", "ITEM_ID_FIELD")):
        path = os.path.join(folder, f"{name}.{suffix}")
        fields = check_atomic_file(path, separator, [config[id_field]]) if os.path.isfile(path) else {}
        for feature in features.get(suffix, []):
            if feature not in fields:
                raise UserError(f"{suffix}_features names '{feature}', which the dataset's .{suffix} file "
                                f"does not have: remove it from {suffix}_features")
            if fields[feature] not in (FeatureType.TOKEN.value, FeatureType.TOKEN_SEQ.value):
                raise UserError(f"{suffix} feature '{feature}' is {fields[feature]}; MIND embeds token and "
                                f"token_seq features only: remove it from {suffix}_features")
