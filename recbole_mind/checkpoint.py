"""Checkpoints the user names: loaded with clear errors, and turned back into a model.

A RecBole checkpoint (``saved/<Model>-<date>.pth``) is a pickle holding the whole Config, so
loading one runs code: only ever load a path the user gave, never one found by globbing.
The trainer's own best-model reload is the same trust (it reads the file it just wrote).
"""

import os
import pickle
import zipfile
from collections import namedtuple

import torch
from recbole.utils import init_seed

from recbole_mind.config import add_item_fields, build_config, resolve_model
from recbole_mind.data import prepare_data
from recbole_mind.distributed import KEYS as DISTRIBUTED_KEYS
from recbole_mind.errors import UserError
from recbole_mind.trainer import VERSION_KEY
from recbole_mind.version import __version__

# A trained model with the data it was trained on: RecBole's config, dataset and loaders.
Restored = namedtuple("Restored", "config dataset train_data valid_data test_data model")


def load_checkpoint(path, map_location="cpu"):
    """The checkpoint dict at ``path`` (a path the user named), or a UserError saying why not."""
    if not path or not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist: give the .pth file RecBole saved under checkpoint_dir")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)  # trusted: user-named
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, AttributeError,
            ModuleNotFoundError, ValueError) as e:
        raise UserError(f"{path} is not a RecBole checkpoint ({type(e).__name__}): give a .pth saved by "
                        f"training") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "config" not in checkpoint:
        raise UserError(f"{path} is not a RecBole checkpoint (no state_dict/config): give a .pth saved by training")
    version = checkpoint.get(VERSION_KEY)
    if version != __version__:
        made_by = f"recbole-mind {version}" if version else "RecBole or a recbole-mind before 0.2.0 (it names no version)"
        raise UserError(f"checkpoint {path} was saved by {made_by}, this is recbole-mind {__version__}: "
                        f"train it again with this version, or use the version that saved it")
    return checkpoint


def check_matches(checkpoint, path, model_name, n_items, item_key="item_embedding.weight"):
    """The checkpoint belongs to ``model_name`` and a catalogue of ``n_items`` items."""
    saved_model = str(checkpoint["config"]["model"])
    if saved_model.lower() != str(model_name).lower():
        raise UserError(f"checkpoint {path} is a {saved_model} model, not {model_name}: give a {model_name} checkpoint")
    weights = checkpoint["state_dict"].get(item_key)
    if weights is not None and weights.shape[0] != n_items:
        raise UserError(
            f"checkpoint {path} was trained on {weights.shape[0]} items (dataset "
            f"{checkpoint['config']['dataset']}), this dataset has {n_items}: use the dataset and "
            f"settings it was trained with"
        )


def restore(path, model="MIND", data_path=None, item_fields=(), purpose="this mode"):
    """:class:`Restored` from the checkpoint at ``path``: its config rebuilt from the settings it
    was trained with, the dataset loaded again (``data_path`` if the data moved; ``item_fields``,
    a list or a function of the rebuilt config giving one, loaded besides), the model on the CPU
    in eval mode.

    Loading extra .item fields cannot move item ids silently: ids follow the order of first
    appearance in the .inter file, so the id map changes only when the .item file adds or
    removes items, and then the item table no longer fits the checkpoint and loading fails.
    """
    checkpoint = load_checkpoint(path)  # a pickle: only the path the user named
    saved = checkpoint["config"]
    if resolve_model(saved["model"]) is not resolve_model(model):
        raise UserError(f"{path} holds a {saved['model']} model: {purpose} needs a {model} checkpoint")
    # one process here, whatever the training ran on
    left_out = {"model", "dataset", "local_rank", *DISTRIBUTED_KEYS}
    values = {k: v for k, v in saved.external_config_dict.items() if k not in left_out}
    if data_path is not None:
        values["data_path"] = data_path
    config = build_config(saved["model"], saved["dataset"], config_dict=values)
    config["device"] = torch.device("cpu")
    fields = item_fields(config) if callable(item_fields) else item_fields
    if fields:
        add_item_fields(config, fields)
    init_seed(config["seed"], config["reproducibility"])
    dataset, train_data, valid_data, test_data = prepare_data(config)
    net = resolve_model(model)(config, train_data._dataset)
    check_matches(checkpoint, path, saved["model"], net.n_items)
    try:
        net.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as e:
        raise UserError(f"{path} does not fit the rebuilt dataset ({str(e).splitlines()[-1].strip()}): "
                        "use the data and settings it was trained with") from None
    net.load_other_parameter(checkpoint.get("other_parameter"))
    return Restored(config, dataset, train_data, valid_data, test_data, net.eval())
