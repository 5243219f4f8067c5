"""Run MIND, or any RecBole built-in, through RecBole's own pipeline without recbole.quick_start.

``recbole.quick_start`` imports ray (and with it pkg_resources); this module does what its
``run_recbole`` does: Config -> create_dataset -> data_preparation -> model -> Trainer.fit ->
Trainer.evaluate(load_best_model=True), and returns RecBole's result dict.
"""

import contextlib
import os
import sys
import time
from logging import getLogger

import torch

from recbole_mind import compat

compat.apply()

from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.utils import get_model, get_trainer, init_logger, init_seed  # noqa: E402

from recbole_mind.checkpoint import check_matches, load_checkpoint  # noqa: E402
from recbole_mind.compare import NOT_PROTOCOL  # noqa: E402
from recbole_mind.checks import check_config_files, check_dataset_files, check_run_config  # noqa: E402
from recbole_mind.download import ensure_dataset  # noqa: E402
from recbole_mind.errors import UserError  # noqa: E402
from recbole_mind.mind import MIND, exclude_input_sequence, properties_dir, read_hyper_parameters  # noqa: E402

DEFAULT_DATASET = "ml-100k"  # ships inside the recbole package: no download
PLUGIN_MODELS = {"MIND": MIND}
# Keys a resumed run may change without a word: the epoch budget (the usual reason to resume)
# and those that change where files go or how much is printed, as for a comparison's protocol.
RESUME_FREE_KEYS = NOT_PROTOCOL | {"epochs", "benchmark_filename"}


def resolve_model(model):
    """The model class for a name ('MIND' or a RecBole built-in) or a class given directly."""
    if not isinstance(model, str):
        return model
    if model in PLUGIN_MODELS:
        return PLUGIN_MODELS[model]
    try:
        return get_model(model)
    except (ValueError, ImportError):  # get_model walks into exlib_recommender (lightgbm, xgboost)
        raise UserError(
            f"unknown model '{model}': use MIND or a RecBole model name such as GRU4Rec, SASRec, SINE"
        ) from None


def config_file_list(model_class, extra_files=None):
    """run.yaml (shared protocol), then MIND.yaml for MIND, then the user's files (last wins)."""
    files = [str(properties_dir() / "run.yaml")]
    if model_class is MIND:
        files.append(str(properties_dir() / "MIND.yaml"))
    extra_files = [str(path) for path in extra_files or []]
    check_config_files(extra_files)
    return files + extra_files


@contextlib.contextmanager
def _argv_hidden_from_recbole():
    """RecBole's Config also parses sys.argv; overrides here arrive through config_dict only."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def build_config(model="MIND", dataset=DEFAULT_DATASET, config_files=None, config_dict=None):
    """RecBole's Config for ``model`` on ``dataset`` with the project's run defaults."""
    model_class = resolve_model(model)
    with _argv_hidden_from_recbole():
        config = Config(model=model_class, dataset=dataset,
                        config_file_list=config_file_list(model_class, config_files),
                        config_dict=dict(config_dict or {}))
    check_run_config(config)
    if model_class is MIND:
        read_hyper_parameters(config)  # bad MIND keys fail now, not after loading the data
    _load_configured_features(config)
    return config


def _load_configured_features(config):
    """Add MIND's user_features / item_features to load_col, so configuring them is enough."""
    load_col = config["load_col"]
    if not isinstance(load_col, dict):
        return
    for source, key, id_field in (("user", "user_features", "USER_ID_FIELD"),
                                  ("item", "item_features", "ITEM_ID_FIELD")):
        fields = config[key] or []
        if fields:
            columns = list(load_col.get(source) or [config[id_field]])
            columns += [f for f in fields if f not in columns]
            load_col[source] = columns
    config["load_col"] = load_col


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


def prepare_data(config):
    """check_data, then RecBole's create_dataset and data_preparation."""
    check_data(config)
    return _load_data(config)


def _load_data(config):
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    return dataset, train_data, valid_data, test_data


def run(model="MIND", dataset=DEFAULT_DATASET, config_files=None, config_dict=None, saved=True,
        resume_from=None, trainer_hook=None, test_history_excluded=False):
    """Train and evaluate one model; returns RecBole's result dict plus timing.

    ``resume_from`` names a checkpoint of an interrupted run to continue with RecBole's own
    ``Trainer.resume_checkpoint`` (model, optimiser, epoch and best score).
    ``trainer_hook(trainer, train_data, epoch_seconds)``, if given, runs just before training
    (it may restore state, and may return a ``callback_fn`` for ``Trainer.fit``).
    ``test_history_excluded`` evaluates the test set a second time with every row's input
    sequence removed from the ranking (:func:`history_excluded`), as ``test_result_history_excluded``.

    Returns:
        dict with RecBole's ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
        ``test_result``, and ``model``, ``dataset``, ``epochs_run``, ``best_epoch``,
        ``train_s_per_epoch``, ``eval_s`` (one full evaluation of the test set), ``saved_model_file``.
    """
    config = build_config(model, dataset, config_files, config_dict)
    check_data(config)  # before RecBole's logging starts, so bad data is one line
    resume_checkpoint = load_checkpoint(resume_from) if resume_from else None
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)

    _, train_data, valid_data, test_data = _load_data(config)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model_class = resolve_model(model)
    net = model_class(config, train_data._dataset).to(config["device"])
    logger.info(net)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    if resume_from:
        check_matches(resume_checkpoint, resume_from, config["model"], net.n_items)
        trainer.resume_checkpoint(resume_from)
        logger.info(f"resumed from {resume_from} at epoch {trainer.start_epoch}")
        changed = resume_changes(resume_checkpoint["config"], config)
        if changed:
            logger.warning(resume_warning(resume_from, changed))

    epoch_seconds = []
    callback_fn = trainer_hook(trainer, train_data, epoch_seconds) if trainer_hook else None
    last_epoch = [trainer.start_epoch - 1]  # 0-based index of the last epoch trained
    _time_epochs(trainer, epoch_seconds, last_epoch)
    _save_checkpoints_atomically(trainer)
    _stop_on_non_finite_loss(trainer)
    try:
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=saved, show_progress=config["show_progress"],
            callback_fn=callback_fn,
        )
    except _NonFiniteLoss as e:
        kept = trainer.saved_model_file if saved and os.path.isfile(trainer.saved_model_file) else None
        raise UserError(
            f"training loss became {e} in epoch {trainer.start_epoch + len(epoch_seconds) + 1}: lower "
            f"learning_rate (now {config['learning_rate']}) or check the data; "
            + (f"the last good checkpoint is kept at {kept}" if kept else "no checkpoint had been saved")
        ) from None
    if best_valid_result is None:
        # Resumed, and no epoch after the checkpoint beat it: RecBole's checkpoint keeps the best
        # score but not its metrics, and fit returns None for them. The best model is the
        # checkpoint itself (resume_checkpoint made it trainer.saved_model_file): re-evaluate it.
        best_valid_result = trainer.evaluate(valid_data, load_best_model=saved, show_progress=config["show_progress"])
    started = time.perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    eval_s = time.perf_counter() - started
    extra = {}
    if test_history_excluded:
        with history_excluded(trainer.model):
            masked = trainer.evaluate(test_data, load_best_model=False, show_progress=config["show_progress"])
        extra["test_result_history_excluded"] = {k: float(v) for k, v in masked.items()}
        logger.info(f"test result, input sequence excluded: {dict(masked)}")

    logger.info(f"best valid : {dict(best_valid_result)}")
    logger.info(f"test result: {dict(test_result)}")
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "best_valid_score": float(best_valid_score),
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": {k: float(v) for k, v in best_valid_result.items()},
        "test_result": {k: float(v) for k, v in test_result.items()},
        "epochs_run": len(epoch_seconds),
        "best_epoch": _best_epoch(trainer, last_epoch[0] + 1, config["eval_step"] or 1),
        "train_s_per_epoch": sum(epoch_seconds) / max(len(epoch_seconds), 1),
        "epoch_seconds": [round(s, 3) for s in epoch_seconds],
        "eval_s": eval_s,
        "saved_model_file": trainer.saved_model_file if saved else None,
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


class _NonFiniteLoss(Exception):
    pass


def _stop_on_non_finite_loss(trainer):
    """RecBole checks each batch's loss for NaN only; stop on inf too, with our own error."""

    def check(loss):
        if not torch.isfinite(loss).all():
            raise _NonFiniteLoss("nan" if torch.isnan(loss).any() else "inf")

    trainer._check_nan = check


def _save_checkpoints_atomically(trainer):
    """Write each best checkpoint to a temporary file and rename it over the old one, so an
    interrupt during torch.save never leaves a corrupt best model behind."""
    save = trainer._save_checkpoint

    def atomic(*args, **kwargs):
        final = kwargs.pop("saved_model_file", trainer.saved_model_file)
        save(*args, saved_model_file=final + ".partial", **kwargs)
        os.replace(final + ".partial", final)

    trainer._save_checkpoint = atomic


def _time_epochs(trainer, sink, last_epoch):
    """Record the wall time of each training epoch (RecBole only logs it), and in
    ``last_epoch[0]`` the index of the last one trained."""
    train_epoch = trainer._train_epoch

    def timed(train_data, epoch_idx, *args, **kwargs):
        started = time.perf_counter()
        result = train_epoch(train_data, epoch_idx, *args, **kwargs)
        sink.append(time.perf_counter() - started)
        last_epoch[0] = epoch_idx
        return result

    trainer._train_epoch = timed


def _best_epoch(trainer, epochs_done, eval_step):
    """1-based epoch of the best validation, counted from the run's first epoch (also after
    ``--resume``): RecBole's stopping counter counts evaluations since the best one
    (cur_step), each eval_step epochs apart, back from the last epoch done."""
    return max(epochs_done - trainer.cur_step * eval_step, 0) if epochs_done else None
