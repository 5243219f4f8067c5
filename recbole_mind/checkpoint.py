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


def config_values(checkpoint, config_dict=None):
    """The keys a checkpoint was trained with (its config's own, beyond the yaml defaults), for
    rebuilding its config: model and dataset left out, and for MIND every key added to MIND.yaml
    since it was saved at the value that behaves as it was trained (``mind.VALUE_BEFORE_KEY``),
    not today's default; ``config_dict`` on top."""
    from recbole_mind.mind import VALUE_BEFORE_KEY

    saved = checkpoint["config"]
    values = {k: v for k, v in saved.external_config_dict.items() if k not in ("model", "dataset")}
    if saved["model"] == "MIND":
        values.update({k: v for k, v in VALUE_BEFORE_KEY.items() if k not in saved})
    values.update(config_dict or {})
    return values
