"""Loading RecBole checkpoints the user names, with clear errors.

A RecBole checkpoint (``saved/<Model>-<date>.pth``) is a pickle holding the whole Config, so
loading one runs code: only ever load a path the user gave, never one found by globbing.
The trainer's own best-model reload is the same trust (it reads the file it just wrote).
"""

import os
import pickle
import zipfile

import torch

from recbole_mind.errors import UserError


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
