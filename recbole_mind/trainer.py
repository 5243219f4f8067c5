"""RecBole's trainer with what a plugin run needs: epoch timing, atomic checkpoints stamped with
the package version, and a stop on any non-finite loss."""

import logging
import os
import re
import time

import torch
from recbole.utils import get_trainer, set_color

from recbole_mind.distributed import barrier, broadcast, global_rank
from recbole_mind.version import __version__

VERSION_KEY = "recbole_mind_version"  # the checkpoint entry naming the version that wrote it


class EpochsFromOne(logging.Filter):
    """RecBole's log counts epochs from 0 ("epoch 0 training", "best eval result in epoch 10"),
    the plugin's summaries, reports and errors from 1 (the best epoch of a run is "epoch 11"):
    this rewrites RecBole's messages to count from 1 too, so every message names an epoch alike."""

    PATTERN = re.compile(r"(epoch )(\d+)(?=\S* (?:training|evaluating))|"
                         r"(best eval result in epoch )(\d+)|(Resume training from epoch )(\d+)")

    @staticmethod
    def _plus_one(match):
        prefix = next(g for g in match.groups()[0::2] if g is not None)
        number = next(g for g in match.groups()[1::2] if g is not None)
        return f"{prefix}{int(number) + 1}"

    def filter(self, record):
        if isinstance(record.msg, str) and "epoch" in record.msg:
            record.msg = self.PATTERN.sub(self._plus_one, record.msg)
        return True


class NonFiniteLoss(Exception):
    """A training batch's loss was NaN or inf (its value is the exception's message)."""


class PluginTrainerMixin:
    """Put before a RecBole trainer class: ``type(name, (PluginTrainerMixin, Trainer), {})``.

    ``epoch_seconds`` holds the wall time of each training epoch of this process and
    ``last_epoch`` the 0-based index of the last one trained.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        root = logging.getLogger()  # RecBole logs through the root logger
        if not any(isinstance(f, EpochsFromOne) for f in root.filters):
            root.addFilter(EpochsFromOne())
        self.epoch_seconds = []
        self.last_epoch = self.start_epoch - 1
        # RecBole names the checkpoint by each rank's clock: every rank uses global rank 0's name
        self.saved_model_file = broadcast(self.saved_model_file)

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        started = time.perf_counter()
        result = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        self.epoch_seconds.append(time.perf_counter() - started)
        self.last_epoch = epoch_idx
        return result

    def resume_checkpoint(self, resume_file):
        super().resume_checkpoint(resume_file)
        self.last_epoch = self.start_epoch - 1

    def _check_nan(self, loss):
        # RecBole stops on NaN only, with an exception of its own; inf ruins a model as surely
        if not torch.isfinite(loss).all():
            raise NonFiniteLoss("nan" if torch.isnan(loss).any() else "inf")

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's checkpoint plus the package version, written to a temporary file and renamed
        over the old one, so an interrupt never leaves a corrupt best model behind."""
        if global_rank() != 0:  # one writer for all machines (RecBole: local rank 0 of each)
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": self.config,
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            VERSION_KEY: __version__,
        }
        torch.save(state, saved_model_file + ".partial", pickle_protocol=4)
        os.replace(saved_model_file + ".partial", saved_model_file)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model:  # under DDP, global rank 0 has finished writing the checkpoint
            barrier()
        return super().evaluate(eval_data, load_best_model=load_best_model, model_file=model_file,
                                show_progress=show_progress)

    def best_epoch(self):
        """1-based epoch of the best validation, counted from the run's first epoch (also after
        a resume): RecBole's stopping counter counts evaluations since the best one (cur_step),
        each eval_step epochs apart, back from the last epoch done."""
        epochs_done = self.last_epoch + 1
        return max(epochs_done - self.cur_step * (self.config["eval_step"] or 1), 0) if epochs_done else None


def plugin_trainer(config, model):
    """The trainer RecBole would pick for ``config['model']``, with :class:`PluginTrainerMixin`."""
    base = get_trainer(config["MODEL_TYPE"], config["model"])
    return type(f"Plugin{base.__name__}", (PluginTrainerMixin, base), {})(config, model)
