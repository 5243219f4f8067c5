"""The train mode: one model trained and evaluated through RecBole's own pipeline.

This does what ``recbole.quick_start.run_recbole`` does (which imports ray): Config ->
create_dataset -> data_preparation -> model -> Trainer.fit -> Trainer.evaluate(load_best_model=True),
and returns RecBole's result dict with the run's timing.
"""

import contextlib
import logging
import os
import time
from logging import getLogger

import torch

from recbole.utils import init_logger, init_seed

from recbole_mind import distributed, multi_target
from recbole_mind.allocator import keep_freed_memory
from recbole_mind.categories import genre_field
from recbole_mind.checkpoint import check_matches, load_checkpoint
from recbole_mind.config import DEFAULT_DATASET, LOCATION_KEYS, build_config, resolve_model
from recbole_mind.data import check_data, load_data
from recbole_mind.diversify import diversified
from recbole_mind.errors import UserError
from recbole_mind.explain import interest_health
from recbole_mind.model import MIND
from recbole_mind.model.scoring import exclude_input_sequence
from recbole_mind.repeats import record
from recbole_mind.trainer import NonFiniteLoss, plugin_trainer
from recbole_mind.version import __version__

# Keys a resumed run may change without a word: the epoch budget (the usual reason to resume)
# and those that change where files go or how much is printed.
RESUME_FREE_KEYS = LOCATION_KEYS | {"epochs", "benchmark_filename"}


def run(model="MIND", dataset=DEFAULT_DATASET, config_files=None, config_dict=None, saved=True,
        resume_from=None, trainer_hook=None, test_history_excluded=False):
    """Train and evaluate one model; returns RecBole's result dict plus timing.

    ``resume_from`` names a checkpoint of an interrupted run to continue with RecBole's own
    ``Trainer.resume_checkpoint`` (model, optimiser, epoch and best score).
    ``trainer_hook(trainer, train_data)``, if given, runs just before training (it may restore
    state, and may return a ``callback_fn`` for ``Trainer.fit``).
    ``test_history_excluded`` evaluates the test set a second time with every row's input
    sequence removed from the ranking (:func:`history_excluded`), as ``test_result_history_excluded``.

    Returns:
        dict with RecBole's ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
        ``test_result``, and ``model``, ``dataset``, ``epochs_run``, ``best_epoch``,
        ``train_rows``, ``train_s_per_epoch``, ``epoch_seconds``, ``eval_s`` (one full evaluation of the test
        set), ``saved_model_file`` and ``version`` (of recbole-mind).
    """
    if distributed.wants_launch(config_dict):  # nproc > 1: this process starts the ranks
        return distributed.launch(run, {
            "model": model, "dataset": dataset, "config_files": config_files, "saved": saved,
            "resume_from": resume_from, "trainer_hook": trainer_hook,
            "test_history_excluded": test_history_excluded}, config_dict)
    keep_freed_memory()  # every training process: the ranks, compare's runs, a plain run
    config = build_config(model, dataset, config_files, config_dict)
    check_data(config)  # before RecBole's logging starts, so bad data is one line
    resume_checkpoint = load_checkpoint(resume_from) if resume_from else None
    init_seed(config["seed"], config["reproducibility"])
    rank = distributed.global_rank()
    if rank == 0:
        init_logger(config)
    else:  # one log: global rank 0's (RecBole's log file name would be the same on every rank)
        logging.getLogger().setLevel(logging.ERROR)
    logger = getLogger()
    logger.info(config)

    dataset, train_data, valid_data, test_data = load_data(config)
    init_seed(config["seed"] + rank, config["reproducibility"])
    net = resolve_model(model)(config, train_data._dataset).to(config["device"])
    logger.info(net)
    # RecBole's Trainer creates it check-then-make, a race between the ranks of one machine
    os.makedirs(config["checkpoint_dir"], exist_ok=True)
    trainer = plugin_trainer(config, net)
    if resume_from:
        check_matches(resume_checkpoint, resume_from, config["model"], net.n_items)
        trainer.resume_checkpoint(resume_from)
        logger.info(f"resumed from {resume_from} at epoch {trainer.start_epoch}")
        changed = resume_changes(resume_checkpoint["config"], config)
        if changed:
            logger.warning(resume_warning(resume_from, changed))

    callback_fn = trainer_hook(trainer, train_data) if trainer_hook else None
    try:
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=saved, show_progress=config["show_progress"],
            callback_fn=callback_fn,
        )
    except NonFiniteLoss as e:
        kept = trainer.saved_model_file if saved and os.path.isfile(trainer.saved_model_file) else None
        raise UserError(
            f"training loss became {e} in epoch {trainer.last_epoch + 2}: lower "
            f"learning_rate (now {config['learning_rate']}) or check the data; "
            + (f"the last good checkpoint is kept at {kept}" if kept else "no checkpoint had been saved")
        ) from None
    if best_valid_result is None:
        # Resumed, and no epoch after the checkpoint beat it: RecBole's checkpoint keeps the best
        # score but not its metrics, and fit returns None for them. The best model is the
        # checkpoint itself (resume_checkpoint made it trainer.saved_model_file): re-evaluate it.
        best_valid_result = trainer.evaluate(valid_data, load_best_model=saved, show_progress=config["show_progress"])
    extra = {}
    is_multi_target = config["eval_protocol"] == multi_target.NAME
    lam = float(config["diversity_lambda"] or 0) if is_multi_target else 0.0
    if is_multi_target:
        labels, extra["diversity_categories"] = multi_target.categories(config, dataset, train_data)
        extra["split"] = test_data.split
    if lam:  # the test lists re-ranked for diversity (diversify.py); validation ranked by score
        ranking = diversified(trainer.model, labels, lam, max(config["topk"]), exclude=test_data.input_items)
    else:
        ranking = contextlib.nullcontext()
    # figures computed outside the Trainer: by global rank 0 alone (the one whose result is kept),
    # over every row (under DDP the loaders are sharded)
    all_test = distributed.Unsharded(test_data) if distributed.is_distributed() else test_data
    with ranking:
        started = time.perf_counter()
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
        eval_s = time.perf_counter() - started
        if is_multi_target and rank == 0:
            test_result.update(multi_target.list_metrics(trainer.model, all_test, labels, config["topk"],
                                                         config["device"]))
    if test_history_excluded:
        with history_excluded(trainer.model):
            masked = trainer.evaluate(test_data, load_best_model=False, show_progress=config["show_progress"])
        extra["test_result_history_excluded"] = {k: float(v) for k, v in masked.items()}
        logger.info(f"test result, input sequence excluded: {dict(masked)}")
    if isinstance(trainer.model, MIND) and rank == 0:
        extra["exclude_history"] = record(trainer.model.exclude_history_choice)
        extra["interest_health"] = interest_health(trainer.model, dataset, all_test, genre_field(config, dataset))
        logger.info(f"interest health: {extra['interest_health']}")
    logger.info(f"best valid : {dict(best_valid_result)}")
    logger.info(f"test result: {dict(test_result)}")
    if distributed.is_distributed():
        extra["distributed"] = {"world_size": config["world_size"], "nproc": config["nproc"],
                                "backend": str(torch.distributed.get_backend()),
                                "rank_peak_rss_mb": distributed.gather(round(distributed.peak_rss_mb(), 1))}
        distributed.end()
    seconds = trainer.epoch_seconds
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "best_valid_score": float(best_valid_score),
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": {k: float(v) for k, v in best_valid_result.items()},
        "test_result": {k: float(v) for k, v in test_result.items()},
        "epochs_run": len(seconds),
        "train_rows": len(train_data._dataset),  # rows of one training epoch, over all ranks
        "best_epoch": trainer.best_epoch(),
        "train_s_per_epoch": sum(seconds) / max(len(seconds), 1),
        "epoch_seconds": [round(s, 3) for s in seconds],
        "eval_s": eval_s,
        "saved_model_file": trainer.saved_model_file if saved else None,
        "version": __version__,
        "torch_threads": torch.get_num_threads(),
        **extra,
    }


def resume_changes(saved_config, config):
    """{key: (this run's value, the checkpoint's)} for every setting either run was given
    (their yaml files, command line and config dict) that differs, RESUME_FREE_KEYS aside."""
    keys = set(saved_config.external_config_dict) | set(config.external_config_dict)
    return {k: (config[k], saved_config[k]) for k in sorted(keys - RESUME_FREE_KEYS)
            if config[k] != saved_config[k]}


def resume_warning(path, changed):
    """One line for a resumed run whose settings are not the checkpoint's. RecBole's
    resume_checkpoint restores the optimiser's state, its learning rate and weight decay with
    it, so a new value of those is silently ignored: say so."""
    listed = ", ".join(f"{k} {now!r} (checkpoint: {saved!r})" for k, (now, saved) in changed.items())
    kept = [k for k in ("learning_rate", "weight_decay") if k in changed]
    return (f"resuming {path} with other settings than it was trained with: {listed}. "
            + (f"{' and '.join(kept)} {'stays' if len(kept) == 1 else 'stay'} the checkpoint's (RecBole restores its optimiser); " if kept else "")
            + "the rest apply from here on. To train with new settings, start a new run instead of resuming.")


@contextlib.contextmanager
def history_excluded(model):
    """Within the block, ``model.full_sort_predict`` scores the items of each row's input sequence
    (its last MAX_ITEM_LIST_LENGTH behaviours) -inf, for any RecBole sequential model.

    RecBole's full ranking of sequential models keeps the user's history in the ranking (general
    models have it removed); this gives every model of a comparison the same filter MIND's
    ``exclude_history`` applies, so its effect can be told apart from the model's.
    """
    original = model.full_sort_predict

    def masked(interaction):  # a copy: the model's own scores are not ours to change
        return exclude_input_sequence(original(interaction).clone(), interaction[model.ITEM_SEQ])

    model.full_sort_predict = masked
    try:
        yield model
    finally:
        del model.full_sort_predict  # back to the class's method
