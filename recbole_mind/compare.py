"""Side-by-side comparison of MIND and RecBole built-ins under one protocol.

``python run_recbole_mind.py --compare MIND GRU4Rec SASRec SINE --dataset amazon-videogames
--data_path=../shared/data`` trains every model on the same dataset, split (run.yaml:
leave-one-out in time order, full ranking), seed, embedding and hidden size, maximum sequence
length, loss and epoch budget, picks each model's learning rate from one grid on validation,
and writes ``results/leave_one_out/<dataset>.md``, ``.json`` and ``.png``.

Each (model, learning rate) run is its own process, so its peak RSS is its own, and its result is
one JSON file under ``results/leave_one_out/runs/<dataset>/``, written atomically; a later call trains only
the runs whose file is missing (``--rerun`` trains them all again), so the comparison can be run
in pieces, one model and learning rate at a time (``--compare SASRec --lr_grid 0.001
--no_report``). A run too long for one sitting is cut at epochs: after every validation its
whole training state is saved (:class:`RunState`), ``--time_budget HOURS`` stops it before an
epoch that would end past the budget (exit status 75), and the same command continues it
exactly where it stopped, with the same result as an uninterrupted run.
"""

import contextlib
import json
import math
import os
import random
import resource
import signal
import sys
import threading
import time
from logging import getLogger
from pathlib import Path

import numpy as np

from recbole_mind import distributed, properties, train
from recbole_mind.config import DEFAULT_DATASET, LOCATION_KEYS, PLUGIN_MODELS, build_config
from recbole_mind.errors import UserError
from recbole_mind.files import atomic_write, write_json_atomic
from recbole_mind.model.hyper_parameters import read_hyper_parameters
from recbole_mind.version import __version__

DEFAULT_LR_GRID = "0.001,0.003"
DEFAULT_RESULTS_DIR = "results"  # the report goes to <results_dir>/<eval_protocol>/<dataset>.*
# Named variants of a model, compared as models of their own: name -> (model, extra yaml, settings).
VARIANTS = {
    "MIND-K1": ("MIND", None, {"interest_num": 1}),
    "MIND-paper": ("MIND", str(properties.MIND_PAPER), {}),
}
# The model settings every compared model gets, whatever its own yaml says: GRU4Rec, SINE and
# MIND size their embeddings with embedding_size, GRU4Rec and SASRec their hidden state with
# hidden_size, so both are fixed. The split, metrics and epoch budget come from run.yaml.
SHARED_SETTINGS = {
    "embedding_size": 64,
    "hidden_size": 64,
    "MAX_ITEM_LIST_LENGTH": 50,
    "loss_type": "CE",
}
# Config keys that define the protocol: a stored run is reused only if these match.
PROTOCOL_KEYS = (
    "eval_protocol", "split_seed", "seed", "reproducibility", "embedding_size", "hidden_size", "MAX_ITEM_LIST_LENGTH",
    "loss_type", "train_neg_sample_args", "epochs", "stopping_step", "eval_step", "valid_metric",
    "metrics", "topk", "eval_args", "train_batch_size", "eval_batch_size", "device",
)
# MIND's own resolved hyper-parameters go in its protocol under this key: a stored MIND run is
# not reused after MIND.yaml's defaults or a --config_files file change them. Not compared
# across models.
MODEL_SETTINGS = "model_settings"
METRIC_ORDER = ("recall", "ndcg", "mrr", "hit", "diversity", "itemcoverage")
METRIC_NAMES = {"recall": "Recall", "ndcg": "NDCG", "mrr": "MRR", "hit": "Hit", "diversity": "Diversity",
                "itemcoverage": "Coverage"}
HEALTH_KEYS = (("mean_cosine", "interest cosine"), ("mean_top10_overlap", "top-10 overlap"),
               ("follows_init", "follows start logits"), ("purity_lift_cooccurrence", "co-occurrence purity lift"),
               ("purity_lift_genre", "genre purity lift"))
PAUSED_EXIT = 75  # EX_TEMPFAIL: runs stopped at --time_budget; the same command continues them


def compare(models, dataset=DEFAULT_DATASET, lr_grid=DEFAULT_LR_GRID, config_files=None, overrides=None,
            rerun=False, no_report=False, torch_threads=None, time_budget=None,
            results_dir=DEFAULT_RESULTS_DIR, split_seeds=None):
    """Train the missing runs, then write the report; returns the report dict (None with
    ``no_report``). Exits with PAUSED_EXIT when ``time_budget`` hours stopped runs unfinished.

    ``models`` are model names or VARIANTS; ``split_seeds`` (multi_target only) repeats every run
    on each seed's user split, and the report gives the mean and spread over them."""
    overrides = dict(overrides or {})
    models = _unique(models)
    seeds = parse_split_seeds(split_seeds)
    lr_text = lr_grid
    grids = parse_lr_grid(lr_grid, models)
    for key in ("learning_rate", "model", "dataset"):
        if key in overrides:
            raise UserError(f"--{key}= cannot be given with --compare: use "
                            + ("--lr_grid" if key == "learning_rate" else f"--{key} NAME"))
    if torch_threads is not None and torch_threads < 1:
        raise UserError(f"--torch_threads must be 1 or more, got {torch_threads}")
    if time_budget is not None and not time_budget > 0:
        raise UserError(f"--time_budget must be a positive number of hours, got {time_budget}")
    deadline = time.time() + 3600 * time_budget if time_budget else None
    config_dict = {**SHARED_SETTINGS, **overrides}
    if seeds != [None] and protocol_of(models[0], dataset, config_files, config_dict,
                                       overrides)["eval_protocol"] != "multi_target":
        raise UserError("--split_seeds is for the multi_target protocol: add --eval_protocol=multi_target")
    protocols = {(model, seed): protocol_of(model, dataset, config_files, config_dict, overrides, seed)
                 for model in models for seed in seeds}
    for protocol in protocols.values():
        protocol["torch_threads"] = torch_threads  # timings are only comparable at one thread count
    eval_protocol = next(iter(protocols.values()))["eval_protocol"]
    for seed in seeds:
        _check_same_protocol({model: protocols[model, seed] for model in models})

    report_dir = Path(results_dir) / eval_protocol
    runs_dir = report_dir / "runs" / dataset
    records, pending = run_all(models, grids, seeds, dataset, config_files, config_dict, protocols,
                               runs_dir, rerun=rerun, deadline=deadline)
    if pending:
        print(f"time budget spent: {len(pending)} run(s) not finished ({'; '.join(pending)}); run "
              "the same command again to continue them from their last finished epoch")
        raise SystemExit(PAUSED_EXIT)
    if no_report:
        return None
    shared = {k: v for k, v in protocols[models[0], seeds[0]].items() if k not in (MODEL_SETTINGS, "split_seed")}
    command = command_line(models, dataset, lr_text, config_files, torch_threads, results_dir, overrides,
                           split_seeds)
    report = build_report(dataset, models, grids, seeds, records, shared, command=command)
    paths = write_report(report, report_dir)
    print(format_table(report))
    print("wrote " + ", ".join(str(p) for p in paths))
    return report


def parse_lr_grid(text, models=None):
    """'0.001,0.003' -> [0.001, 0.003] (every value a positive float, none repeated); with
    ``models``, {model: its grid}, where 'SINE=0.001' entries give a model a grid of its own
    ('0.003,SINE=0.001': SINE tries 0.001, every other model 0.003)."""
    shared, own = [], {}
    try:
        for item in (v.strip() for v in str(text).split(",")):
            if not item:
                continue
            name, sep, value = item.rpartition("=")
            (own.setdefault(name, []) if sep else shared).append(float(value))
    except ValueError:
        raise UserError(f"--lr_grid {text!r} is not a comma-separated list of numbers, "
                        "e.g. --lr_grid 0.001,0.003 or --lr_grid 0.003,SINE=0.001") from None
    values = shared + [v for grid in own.values() for v in grid]
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise UserError(f"--lr_grid {text!r} needs one or more positive learning rates, "
                        "e.g. --lr_grid 0.001,0.003")
    if models is None:
        return _unique(values)
    unknown = sorted(set(own) - set(models))
    if unknown:
        raise UserError(f"--lr_grid names {', '.join(unknown)}, which --compare does not: name compared models only")
    grids = {model: _unique(own.get(model) or shared) for model in models}
    missing = [model for model, grid in grids.items() if not grid]
    if missing:
        raise UserError(f"--lr_grid {text!r} gives no learning rate for {', '.join(missing)}: add a shared one")
    return grids


def parse_split_seeds(text):
    """'1,2,3' -> [1, 2, 3]; None -> [None] (the run's own split_seed)."""
    if text is None:
        return [None]
    try:
        seeds = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise UserError(f"--split_seeds {text!r} is not a comma-separated list of whole numbers, e.g. 1,2,3")
    return _unique(seeds)


def variant(name):
    """(model, extra yaml file or None, extra settings) of a compared name."""
    return VARIANTS.get(name, (name, None, {}))


def _unique(values):
    return list(dict.fromkeys(values))


def run_settings(name, config_files, config_dict, seed):
    """(model, config files, config dict) of one compared name on one split seed."""
    model, extra_file, extra = variant(name)
    files = list(config_files or []) + ([extra_file] if extra_file else [])
    settings = {**config_dict, **extra, **({"split_seed": seed} if seed is not None else {})}
    return model, files or None, settings


def protocol_of(name, dataset, config_files, config_dict, overrides, seed=None):
    """The protocol settings of ``name``'s run, as RecBole's Config resolves them (for MIND
    also its own hyper-parameters, under MODEL_SETTINGS)."""
    model, config_files, config_dict = run_settings(name, config_files, config_dict, seed)
    config = build_config(model, dataset, config_files, config_dict)
    keys = list(PROTOCOL_KEYS) + sorted(k for k in overrides if k not in LOCATION_KEYS
                                       and k not in PROTOCOL_KEYS)
    protocol = {"dataset": dataset, "version": __version__}
    protocol.update({key: config[key] for key in keys})
    if model in PLUGIN_MODELS:
        protocol[MODEL_SETTINGS] = vars(read_hyper_parameters(config))
    if protocol["eval_protocol"] == "multi_target" and protocol["split_seed"] is None:
        protocol["split_seed"] = protocol["seed"]  # the split the run will draw
    return _plain(protocol)


def same_protocol(stored, fresh):
    """Whether a stored run's protocol is ``fresh`` (the package version included: another
    version may compute other figures). A MIND key the stored run does not name matches at its
    default: a key is added opt-in, its default the model as it was (tests/test_compare.py)."""
    stored, fresh = dict(stored or {}), dict(fresh)
    if isinstance(stored.get(MODEL_SETTINGS), dict) and isinstance(fresh.get(MODEL_SETTINGS), dict):
        defaults = _plain(vars(read_hyper_parameters({})))
        added = {k: v for k, v in fresh[MODEL_SETTINGS].items()
                 if k not in stored[MODEL_SETTINGS] and k in defaults and v == defaults[k]}
        stored[MODEL_SETTINGS] = {**stored[MODEL_SETTINGS], **added}
    return stored == fresh


def _plain(value):
    """JSON-safe copy (tuples become lists, devices strings), so stored and fresh values compare equal."""
    return json.loads(json.dumps(value, default=str))


def _check_same_protocol(protocols):
    models = list(protocols)
    first = protocols[models[0]]
    for model in models[1:]:
        for key in first:
            if key != MODEL_SETTINGS and protocols[model].get(key) != first[key]:
                raise UserError(f"{model} and {models[0]} would run with different {key} "
                                f"({protocols[model].get(key)!r} vs {first[key]!r}): set it for "
                                f"all models, e.g. --{key}=...")


def run_name(name, lr, seed=None):
    """<name>_lr<lr>[_split<seed>]: a run's file stem and checkpoint folder."""
    return f"{name}_lr{lr:g}" + (f"_split{seed}" if seed is not None else "")


def run_file(runs_dir, name, lr, seed=None):
    return Path(runs_dir) / f"{run_name(name, lr, seed)}.json"


def run_all(models, grids, seeds, dataset, config_files, config_dict, protocols, runs_dir, rerun=False,
            deadline=None):
    """Every (name, learning rate, split seed) run's record, training in its own process each one
    not stored.

    Returns (records, pending): pending names the runs left unfinished at the deadline.
    """
    from tqdm import tqdm

    runs_dir.mkdir(parents=True, exist_ok=True)
    todo, records = [], {}
    for model in models:
        for seed in seeds:
            for lr in grids[model]:
                path = run_file(runs_dir, model, lr, seed)
                if rerun:
                    RunState(path).remove()
                stored = None if rerun else load_run(path, protocols[model, seed])
                if stored is None:
                    RunState(path).check(protocols[model, seed])
                    todo.append((model, lr, seed))
                else:
                    records[model, lr, seed] = stored

    failures, pending = [], []
    total = sum(len(grid) for grid in grids.values()) * len(seeds)
    with _sigterm_as_exit(), tqdm(total=total, initial=total - len(todo), unit="run",
                                  desc=f"compare on {dataset}", file=sys.stderr,
                                  dynamic_ncols=True) as bar:
        for i, (name, lr, seed) in enumerate(todo):
            path = run_file(runs_dir, name, lr, seed)
            label = f"{name} lr={lr:g}" + (f" split {seed}" if seed is not None else "")
            progress = RunState(path).progress()
            # The first run always starts, so every call makes progress; a later one only if its
            # next epoch, as timed before, still fits.
            if i and deadline is not None and time.time() + progress.get("next_s", 0) > deadline:
                pending.append(f"{label} not started")
                continue
            resumed = f" from epoch {progress['epoch'] + 2}" if progress else ""
            bar.set_postfix_str(f"{label}{resumed}")
            model, files, settings = run_settings(name, config_files, config_dict, seed)
            spec = {"model": model, "name": name, "dataset": dataset, "learning_rate": lr,
                    "split_seed": seed, "config_files": files,
                    "config_dict": {"checkpoint_dir": _checkpoint_dir(dataset, name, lr, seed),
                                    **settings, "learning_rate": lr},
                    "protocol": protocols[name, seed], "out": str(path.resolve()),
                    "cwd": os.getcwd(), "torch_threads": protocols[name, seed]["torch_threads"],
                    "deadline": deadline}
            record, error = train_in_subprocess(spec, path.parent / f"{path.stem}.log")
            if error == "paused":
                done = RunState(path).progress()
                where = f"after epoch {done['epoch'] + 1} of {done['epochs']}"
                pending.append(f"{label} {where}")
                bar.write(f"{label}: paused {where} (time budget)")
            elif record is None:
                failures.append(f"{label} ({error})")
            else:
                records[name, lr, seed] = record
                bar.write(_summary_line(record))
                bar.update(1)
    if failures:
        raise UserError(f"{len(failures)} run(s) failed: " + "; ".join(failures)
                        + ": fix the cause and run the same command again (finished runs are kept)")
    return records, pending


def _checkpoint_dir(dataset, name, lr, seed=None):
    """saved/compare/<dataset>/<run name>/: RecBole names its checkpoints by model and start
    second only, so runs of one model started within a second would share a file."""
    return os.path.join("saved", "compare", dataset, run_name(name, lr, seed))


@contextlib.contextmanager
def _sigterm_as_exit():
    """While runs train, SIGTERM (kill PID) unwinds like Ctrl-C, so the running run is stopped too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_now(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def load_run(path, protocol):
    """The stored record at ``path`` if it exists and was made under ``protocol``, else None."""
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    if not same_protocol(record.get("protocol"), protocol):
        changed = sorted(k for k in set(protocol) | set(record.get("protocol") or {})
                         if (record.get("protocol") or {}).get(k) != protocol.get(k))
        raise UserError(f"{path} was trained under another protocol (differs in "
                        f"{', '.join(changed)}): give --rerun to train it again, or another "
                        "--results_dir")
    return record


def train_in_subprocess(spec, log_path):
    """Run one (model, learning rate) in its own process, its output appended to ``log_path``.

    The process is forked from a server that has imported torch and RecBole once (a
    multiprocessing forkserver), so a run does not pay the imports again, and its memory, seed
    state and RecBole globals are its own. Returns (record, None), (None, "paused") when the run
    stopped at the deadline, or (None, reason) on failure.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = _context().Process(target=_worker_main, args=(spec, str(log_path)),
                                 name=run_name(spec["name"], spec["learning_rate"], spec["split_seed"]))
    process.start()
    try:
        process.join()
    except BaseException:  # Ctrl-C or SIGTERM: do not leave the run training on its own
        process.terminate()
        process.join()
        raise
    out = Path(spec["out"])
    if process.exitcode == PAUSED_EXIT:
        return None, "paused"
    if process.exitcode != 0 or not out.is_file():
        lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        last = lines[-1] if lines else "no output"
        return None, f"exit code {process.exitcode}, see {log_path}: {last}"
    with open(out, encoding="utf-8") as f:
        return json.load(f), None


_CONTEXT = None


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        import multiprocessing

        # The server is told the parent's sys.path; a '' entry there means the server's own
        # folder, so name the folder recbole_mind was imported from explicitly.
        package_root = str(Path(__file__).resolve().parent.parent)
        if package_root not in sys.path:
            sys.path.append(package_root)
        if "forkserver" in multiprocessing.get_all_start_methods():
            _CONTEXT = multiprocessing.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(["recbole_mind.compare"])
        else:  # Windows: a fresh interpreter per run
            _CONTEXT = multiprocessing.get_context("spawn")
    return _CONTEXT


def _worker_main(spec, log_path):
    """Entry point of a run's process: output to ``log_path``, then :func:`worker`."""
    os.chdir(spec["cwd"])  # the server started in whatever folder the first call ran from
    with open(log_path, "a", encoding="utf-8") as log:  # a run cut in pieces keeps one log
        log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} process {os.getpid()}\n")
        log.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        worker(spec)
        sys.stdout.flush()
        sys.stderr.flush()


def _summary_line(record):
    result = record["result"]
    split = f" split {record['split_seed']}" if record.get("split_seed") is not None else ""
    return (f"{record['model']} lr={record['learning_rate']:g}{split}: {result['epochs_run']} epochs, best "
            f"at {result['best_epoch']}, {result['train_s_per_epoch']:.1f} s/epoch, valid "
            f"{record['valid_metric']} {result['best_valid_score']:.4f}, peak RSS "
            f"{record['peak_rss_mb']:.0f} MB")


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Paused(distributed.Signal):
    """Raised from Trainer.fit's callback when the next epoch would end after the deadline (on
    every rank of a run on several processes: global rank 0 decides)."""


class RunState:
    """Epoch-level training state of one (model, learning rate) run, saved after each validation.

    It holds what a later process needs to continue the run exactly as if it had not stopped:
    the model, the optimiser, RecBole's early-stopping counters, the best validation result and
    the best checkpoint's path, the epoch times so far, and every random generator training draws
    from (torch's global one: dropout, MIND's routing logits; numpy; random; and the training
    loader's shuffling). ``<run>.state.pth`` holds the tensors, ``<run>.state.json`` the
    protocol and progress, so the parent can check them without loading torch state.
    """

    def __init__(self, run_path, protocol=None, deadline=None):
        run_path = Path(run_path)
        self.pth = run_path.parent / f"{run_path.stem}.state.pth"
        self.json = run_path.parent / f"{run_path.stem}.state.json"
        self.protocol, self.deadline = protocol, deadline
        self.started, self.cpu_started = time.time(), _cpu_seconds()
        self.before = {"wall_s": 0.0, "cpu_s": 0.0, "peak_rss_mb": 0.0, "pieces": 0}

    def progress(self):
        """The stored progress ({} when there is none): last finished epoch, epochs, next_s, ..."""
        if not self.json.is_file():
            return {}
        with open(self.json, encoding="utf-8") as f:
            return json.load(f)

    def check(self, protocol):
        stored = self.progress()
        if stored and not same_protocol(stored.get("protocol"), protocol):
            raise UserError(f"{self.json} belongs to a run under another protocol: give --rerun to "
                            "start it again, or another --results_dir")

    def remove(self):
        self.pth.unlink(missing_ok=True)
        self.json.unlink(missing_ok=True)

    def hook(self, trainer, train_data):
        """train.run's trainer_hook: restore a stored state, return the fit callback."""
        self.trainer, self.train_data, self.epoch_seconds = trainer, train_data, trainer.epoch_seconds
        if self.pth.is_file():
            self._restore()
        self.fit_started, self.first_epoch = time.time(), len(self.epoch_seconds)
        self.load_s = self.fit_started - self.started
        return self.after_validation

    def after_validation(self, epoch_idx, valid_score):
        """Runs after RecBole's early stopping and best-checkpoint save for this epoch."""
        trainer = self.trainer
        if epoch_idx + 1 >= trainer.epochs or trainer.cur_step > trainer.stopping_step:
            return  # fit ends after this epoch anyway
        train_s = sum(self.epoch_seconds[self.first_epoch:])
        epochs = len(self.epoch_seconds) - self.first_epoch
        valid_s = max(time.time() - self.fit_started - train_s, 0.0) / epochs
        next_s = train_s / epochs + valid_s  # one more epoch with its validation
        if distributed.global_rank() == 0:  # one writer; the other ranks continue from rank 0's state
            self._save(epoch_idx, next_s)
        # valid_s again: the test evaluation after the last epoch
        if distributed.broadcast(self.deadline is not None and time.time() + next_s + valid_s > self.deadline):
            raise _Paused(epoch_idx)

    def usage(self):
        """Wall and CPU seconds, peak RSS and process count of the run, all pieces so far."""
        return {"wall_s": self.before["wall_s"] + time.time() - self.started,
                "cpu_s": self.before["cpu_s"] + _cpu_seconds() - self.cpu_started,
                "peak_rss_mb": max(self.before["peak_rss_mb"], distributed.peak_rss_mb()),
                "pieces": self.before["pieces"] + 1}

    def _save(self, epoch_idx, next_s):
        import numpy as np
        import torch

        trainer = self.trainer
        state = {
            "epoch": epoch_idx,
            "cur_step": trainer.cur_step,
            "best_valid_score": trainer.best_valid_score,
            "best_valid_result": trainer.best_valid_result,
            "saved_model_file": trainer.saved_model_file,
            "state_dict": trainer.model.state_dict(),
            "other_parameter": trainer.model.other_parameter(),
            "optimizer": trainer.optimizer.state_dict(),
            "epoch_seconds": list(self.epoch_seconds),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                    "random": random.getstate(), "loader": self.train_data.generator.get_state()},
            "usage": self.usage(),
        }
        atomic_write(self.pth, lambda f: torch.save(state, f))
        write_json_atomic(self.json, {"protocol": self.protocol, "epoch": epoch_idx,
                                      "epochs": trainer.epochs, "next_s": next_s + self.load_s,
                                      "usage": state["usage"], "saved": time.strftime("%Y-%m-%d %H:%M:%S")})

    def _restore(self):
        import numpy as np
        import torch

        trainer = self.trainer
        state = torch.load(self.pth, map_location=trainer.device, weights_only=False)  # our own file
        if state["best_valid_result"] is not None and not os.path.isfile(state["saved_model_file"]):
            raise UserError(f"the best checkpoint {state['saved_model_file']} of the stopped run is "
                            "gone: give --rerun to start the run again")
        trainer.model.load_state_dict(state["state_dict"])
        trainer.model.load_other_parameter(state["other_parameter"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.start_epoch = state["epoch"] + 1
        trainer.last_epoch = state["epoch"]
        trainer.cur_step = state["cur_step"]
        trainer.best_valid_score = state["best_valid_score"]
        trainer.best_valid_result = state["best_valid_result"]
        trainer.saved_model_file = state["saved_model_file"]
        self.epoch_seconds[:] = state["epoch_seconds"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["random"])
        self.train_data.generator.set_state(state["rng"]["loader"])
        self.before = state["usage"]
        getLogger().info(f"continuing from the state saved after epoch {state['epoch'] + 1}")


def worker(spec):
    """Train and evaluate one (model, learning rate) in this process, or continue it from its
    stored state; store its record, or exit with PAUSED_EXIT at the deadline."""
    import torch

    if torch.is_anomaly_enabled():  # not an assert: python -O would drop it
        raise RuntimeError("autograd anomaly detection is on: recbole_mind.compat did not apply")
    if spec.get("torch_threads"):
        torch.set_num_threads(spec["torch_threads"])
    state = RunState(spec["out"], spec["protocol"], spec.get("deadline"))
    # the pieces so far, also where the state is restored in other processes (the ranks of --nproc)
    state.before = state.progress().get("usage", state.before)
    try:
        result = train.run(spec["model"], spec["dataset"], config_files=spec["config_files"],
                           config_dict=spec["config_dict"], trainer_hook=state.hook,
                           # multi_target removes each row's input for every model already
                           test_history_excluded=spec["protocol"]["eval_protocol"] == "leave_one_out")
    except _Paused as paused:
        getLogger().info(f"paused after epoch {paused.args[0] + 1}: the time budget is spent")
        raise SystemExit(PAUSED_EXIT) from None
    record = {
        "model": spec["name"],
        "dataset": spec["dataset"],
        "learning_rate": spec["learning_rate"],
        "split_seed": spec["split_seed"],
        "protocol": spec["protocol"],
        "version": __version__,
        "valid_metric": spec["protocol"]["valid_metric"].lower(),
        "result": result,
        # wall and CPU time over all the run's pieces: on a shared machine their ratio shows how
        # much of the wall time was spent waiting for a core
        **state.usage(),
        "anomaly_detection": torch.is_anomaly_enabled(),
        "torch_threads": torch.get_num_threads(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    ranks = (result.get("distributed") or {}).get("rank_peak_rss_mb")
    if ranks:  # the training ran in the ranks, not in this (launching) process
        record["peak_rss_mb"] = max([record["peak_rss_mb"], *ranks])
    write_json_atomic(spec["out"], record)
    state.remove()


def select_learning_rate(runs_by_lr):
    """The learning rate whose runs have the best mean validation score (over the split seeds);
    on a tie the one listed first in the grid."""
    best = None
    for lr, runs in runs_by_lr.items():
        score = float(np.mean([run["result"]["best_valid_score"] for run in runs]))
        bigger = runs[0]["result"]["valid_score_bigger"]
        if best is None or (score > best[0] if bigger else score < best[0]):
            best = (score, lr)
    return best[1]


def _mean(dicts):
    keys = dicts[0].keys() if dicts and dicts[0] else ()
    return {k: float(np.mean([d[k] for d in dicts])) for k in keys}


def _std(dicts):
    keys = dicts[0].keys() if dicts and dicts[0] else ()
    return {k: float(np.std([d[k] for d in dicts])) for k in keys}


def _mean_health(healths):
    """Mean of each interest-health figure over the seeds (None where a seed has none)."""
    healths = [h for h in healths if h]
    if not healths:
        return None
    return {k: (float(np.mean([h[k] for h in healths])) if all(h.get(k) is not None for h in healths) else None)
            for k in healths[0]}


def build_report(dataset, models, grids, seeds, records, protocol, command):
    """The comparison as one dict: the protocol, and per model its selected runs' figures (the
    mean over the split seeds, with their spread, where there are several)."""
    entries = {}
    for model in models:
        by_lr = {lr: [records[model, lr, seed] for seed in seeds] for lr in grids[model]}
        lr = select_learning_rate(by_lr)
        chosen = by_lr[lr]
        results = [run["result"] for run in chosen]
        seconds = [s for result in results for s in result["epoch_seconds"]]
        health = _mean_health([result.get("interest_health") for result in results])
        entries[model] = {
            "test": _mean([result["test_result"] for result in results]),
            "test_std": _std([result["test_result"] for result in results]) if len(seeds) > 1 else None,
            # the same checkpoint, ranked without the items of each test row's input sequence
            # (leave-one-out; multi_target removes them for every model in the main table)
            "test_history_excluded": (_mean([r["test_result_history_excluded"] for r in results])
                                      if all(r.get("test_result_history_excluded") for r in results) else None),
            "valid": _mean([result["best_valid_result"] for result in results]),
            # MIND's exclude_history as it ran: the setting, the measured repeat share, on or off
            "exclude_history": results[0].get("exclude_history"),
            "interest_cosine": health["mean_cosine"] if health else None,
            "interest_health": health,
            "train_s_per_epoch": float(np.mean([result["train_s_per_epoch"] for result in results])),
            # the fastest epoch: the least disturbed by other jobs on a shared machine
            "train_s_per_epoch_min": min(seconds) if seconds else None,
            "eval_s": float(np.mean([result["eval_s"] for result in results])),
            "best_epoch": results[0]["best_epoch"] if len(seeds) == 1 else [r["best_epoch"] for r in results],
            "epochs_run": results[0]["epochs_run"] if len(seeds) == 1 else [r["epochs_run"] for r in results],
            "peak_rss_mb": max(run["peak_rss_mb"] for run in chosen),
            "torch_threads": chosen[0].get("torch_threads"),
            "learning_rate": lr,
            "lr_grid_valid": {f"{g:g}": float(np.mean([run["result"]["best_valid_score"] for run in runs]))
                              for g, runs in by_lr.items()},
            # MIND's own hyper-parameters as the run used them (None for RecBole's models)
            MODEL_SETTINGS: (chosen[0].get("protocol") or {}).get(MODEL_SETTINGS),
        }
        if len(seeds) > 1:
            entries[model]["seeds"] = {str(seed): {"test": result["test_result"], "best_epoch": result["best_epoch"],
                                                   "interest_health": result.get("interest_health")}
                                       for seed, result in zip(seeds, results)}
    splits = {}
    for (model, lr, seed), record in records.items():
        split = record["result"].get("split")
        if split:
            splits[str(split["seed"])] = {"users": split["users"], "sha256": split["sha256"]}
    return {
        "dataset": dataset,
        "command": command,
        "protocol": {
            **protocol,
            "split": describe_split(protocol),
            "ranking": describe_ranking(protocol),
            "epoch_budget": {"epochs": protocol["epochs"], "stopping_step": protocol["stopping_step"],
                             "early_stopping_on": protocol["valid_metric"]},
            "lr_grid": _unique([lr for grid in grids.values() for lr in grid]),
            "lr_grids": grids,
            "lr_selection": f"per model, the grid value with the best (mean) validation {protocol['valid_metric']}",
            "split_seeds": seeds if seeds != [None] else None,
            "user_splits": splits or None,
            "peak_rss": "peak resident memory of the run's own process (ru_maxrss), Python, "
                        "torch and RecBole included",
        },
        "models": entries,
    }


def describe_split(protocol):
    """Words for the protocol's split, e.g. run.yaml's leave-one-out in time order."""
    if protocol.get("eval_protocol") == "multi_target":
        return ("users split at random 8:1:1 into train, valid and test users; each valid and test user's "
                "first 80% of behaviours in, the rest the targets")
    eval_args = protocol["eval_args"]
    split, order = eval_args.get("split") or {}, eval_args.get("order")
    if split == {"LS": "valid_and_test"} and order == "TO":
        return "leave-one-out per user in time order: last item test, second last valid"
    return f"split {json.dumps(split)}, order {order}, grouped by {eval_args.get('group_by')}"


def describe_ranking(protocol):
    if protocol.get("eval_protocol") == "multi_target":
        return "full ranking over all items, each row's input sequence removed for every model"
    modes = protocol["eval_args"].get("mode") or {}
    modes = set(modes.values()) if isinstance(modes, dict) else {modes}
    if modes == {"full"}:
        return "full ranking over all items"
    return "ranking mode " + ", ".join(sorted(map(str, modes)))


def command_line(models, dataset, lr_grid, config_files, torch_threads, results_dir, overrides, split_seeds=None):
    parts = ["python run_recbole_mind.py --compare", *models, "--dataset", dataset, "--lr_grid", str(lr_grid)]
    if split_seeds is not None:
        parts += ["--split_seeds", str(split_seeds)]
    if config_files:
        parts += ["--config_files", f"'{' '.join(map(str, config_files))}'"]
    if torch_threads is not None:
        parts += ["--torch_threads", str(torch_threads)]
    if str(results_dir) != DEFAULT_RESULTS_DIR:
        parts += ["--results_dir", str(results_dir)]
    parts += [f"--{k}={v}" for k, v in overrides.items()]
    return " ".join(parts)


def metric_columns(report):
    """('recall', 10), ... for every metric and cut-off the runs report, in METRIC_ORDER then k."""
    keys = next(iter(report["models"].values()))["test"]
    columns = []
    for name in METRIC_ORDER:
        cutoffs = sorted(int(k.split("@")[1]) for k in keys if k.split("@")[0] == name)
        columns += [(name, k) for k in cutoffs]
    return columns


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def metric_table(report, key="test"):
    """The markdown table of one result set per model (best of each column in bold; the mean
    +- the spread over the split seeds where there are several)."""
    models = report["models"]
    columns = metric_columns(report)
    best = {c: max(m[key][f"{c[0]}@{c[1]}"] for m in models.values()) for c in columns}
    rows = []
    for name, m in models.items():
        cells = []
        for c in columns:
            value = m[key][f"{c[0]}@{c[1]}"]
            cell = f"**{value:.4f}**" if value == best[c] else f"{value:.4f}"
            if key == "test" and m.get("test_std"):
                cell += f" ± {m['test_std'][f'{c[0]}@{c[1]}']:.4f}"
            cells.append(cell)
        rows.append([name, f"{m['learning_rate']:g}", *cells])
    header = ["Model", "LR", *(f"{METRIC_NAMES[n]}@{k}" for n, k in columns)]
    return _table(header, rows)


def health_section(report):
    """The interest-health table of the models that have interests (MIND and its variants)."""
    rows = [[name, *("-" if (m["interest_health"] or {}).get(k) is None else f"{m['interest_health'][k]:.3f}"
                     for k, _ in HEALTH_KEYS)]
            for name, m in report["models"].items() if m.get("interest_health")]
    if not rows:
        return []
    return [
        "## Interest health (test rows)",
        "",
        "Mean pairwise cosine of a user's interests and share of top-10 items two interests both "
        "retrieve (1: the interests are one); share of routed behaviours whose largest weight goes "
        "where their start logit points; purity lift of each interest's behaviours over a random "
        "split of the same sizes (0: no grouping). `python run_recbole_mind.py --explain` draws them.",
        "",
        *_table(["Model", *(label for _, label in HEALTH_KEYS)], rows),
        "",
    ]


def splits_section(report):
    """Each user split's test figure on the validation metric, and on how many splits each model
    is first: whether an order of the means holds split by split."""
    seeds = report["protocol"].get("split_seeds") or []
    metric = report["protocol"]["valid_metric"].lower()
    if len(seeds) < 2 or not all(metric in m["seeds"][str(s)]["test"]
                                 for m in report["models"].values() for s in seeds):
        return []
    values = {name: [m["seeds"][str(s)]["test"][metric] for s in seeds] for name, m in report["models"].items()}
    best = [max(column) for column in zip(*values.values())]
    rows = [[name, *(f"**{v:.4f}**" if v == b else f"{v:.4f}" for v, b in zip(vs, best)),
             str(sum(v == b for v, b in zip(vs, best)))] for name, vs in values.items()]
    return [
        f"## Per user split (test {report['protocol']['valid_metric']})",
        "",
        "Each split's figure, the best in bold, and the number of splits on which the model is first.",
        "",
        *_table(["Model", *(f"split {s}" for s in seeds), "first on"], rows),
        "",
    ]


def history_excluded_section(report):
    """The second test table: the same checkpoints, each input sequence removed."""
    if not all(m.get("test_history_excluded") for m in report["models"].values()):
        return []  # multi_target removes it in the main table already
    return [
        "## Test set, each user's input sequence removed from the ranking",
        "",
        "The same checkpoints, with the items of each test row's input sequence (its last "
        "MAX_ITEM_LIST_LENGTH behaviours) scored -inf for every model. RecBole's full ranking of "
        "sequential models (the table above) keeps them in; MIND with `exclude_history` on "
        "removes them itself, so this table shows how much of a gap is that filter alone.",
        *exclude_history_lines(report),
        "",
        *metric_table(report, "test_history_excluded"),
        "",
    ]


def exclude_history_lines(report):
    """Where MIND's exclude_history stood in each MIND run of the report, and why."""
    lines = []
    for name, m in report["models"].items():
        choice = m.get("exclude_history")
        if choice:
            how = "auto" if choice["setting"] == "auto" else f"set to {choice['setting']}"
            lines.append(f"{name}: exclude_history {'on' if choice['on'] else 'off'} ({how}; "
                         f"{choice['repeat_share']:.1%} of the training labels repeat their input sequence).")
    return ["", *lines] if lines else []


def format_table(report):
    """The markdown tables: test metrics (best of each column in bold), then cost."""
    models = report["models"]
    lines = metric_table(report) + [""]
    def fastest(m):
        return f"{m['train_s_per_epoch_min']:.2f}" if m["train_s_per_epoch_min"] else "-"

    def listed(value):
        return ", ".join(map(str, value)) if isinstance(value, list) else str(value)

    cost_rows = [[name, f"{m['train_s_per_epoch']:.2f}", fastest(m), f"{m['eval_s']:.2f}",
                  listed(m["best_epoch"]), listed(m["epochs_run"]), f"{m['peak_rss_mb']:.0f}"]
                 for name, m in models.items()]
    lines += _table(["Model", "train s/epoch", "fastest epoch s", "full-sort eval s (test)",
                     "best epoch", "epochs run", "peak RSS MB"], cost_rows)
    return "\n".join(lines)


def _users_line(splits):
    counts = [f"split {seed}: {v['users']['train']} / {v['users']['valid']} / {v['users']['test']} users"
              for seed, v in sorted(splits.items())]
    left = max(v["users"]["left_out_one_interaction"] + v["users"]["left_out_no_new_target"] for v in splits.values())
    left_out = (f"at most {left} users left out (one interaction, or no later item that is not in the input)"
                if left else "no user left out")
    return f"train / valid / test users ({'; '.join(counts)}; {left_out})"


def format_markdown(report):
    p = report["protocol"]
    grids = p.get("lr_grids") or {}

    def braces(values):
        return "{" + ", ".join(f"{v:g}" for v in values) + "}"

    lr_text = (braces(p["lr_grid"]) if len({tuple(g) for g in grids.values()}) <= 1 else
               "its grid (" + "; ".join(f"{m} {braces(g)}" for m, g in grids.items()) + ")")
    budget = p["epoch_budget"]
    grid = [f"{lr:g}" for lr in p["lr_grid"]]
    lr_rows = [[name, *(f"{m['lr_grid_valid'][lr]:.4f}" if lr in m["lr_grid_valid"] else "-" for lr in grid)]
               for name, m in report["models"].items()]
    return "\n".join([
        f"# Comparison on {report['dataset']}",
        "",
        f"Command: `{report['command']}`",
        "",
        "Protocol, the same for every model: " + "; ".join([
            p["split"], p["ranking"], f"seed {p['seed']}",
            *([f"user splits of seeds {', '.join(map(str, p['split_seeds']))}: every figure the mean "
               "± the standard deviation over them"] if p.get("split_seeds") else []),
            *([_users_line(p["user_splits"])] if p.get("user_splits") else []),
            *([f"test lists re-ranked for category diversity (ComiRec's greedy aggregation, "
               f"diversity_lambda {p['diversity_lambda']:g}; validation by score)"] if p.get("diversity_lambda") else []),
            f"embedding_size {p['embedding_size']} and hidden_size {p['hidden_size']}",
            f"MAX_ITEM_LIST_LENGTH {p['MAX_ITEM_LIST_LENGTH']}", f"loss {p['loss_type']}",
            f"train batch {p['train_batch_size']}",
            f"epoch budget {budget['epochs']}, early stopping after {budget['stopping_step']} "
            f"evaluations without a better validation {budget['early_stopping_on']}",
            f"learning rate per model from {lr_text}, picked on validation {p['valid_metric']}",
            f"device {p['device']}",
        ]) + ".",
        "",
        "## Test set (full ranking)" if p.get("eval_protocol") != "multi_target" else
        "## Test users (full ranking, input sequence removed)",
        "",
        format_table(report),
        "",
        "Train s/epoch is the mean wall time of a training epoch, fastest epoch the least "
        "disturbed one (on a shared machine the fairer basis for speed ratios); eval s is one full-sort "
        "evaluation of the test users; best epoch is the epoch of the best validation score, the "
        "checkpoint evaluated on test; peak RSS is the run's own process. Torch threads: "
        + ", ".join(f"{name} {m.get('torch_threads')}" for name, m in report["models"].items()) + ".",
        "",
        *splits_section(report),
        *history_excluded_section(report),
        *health_section(report),
        f"## Learning-rate grid (best validation {p['valid_metric']})",
        "",
        *_table(["Model", *grid], lr_rows),
        "",
        f"![main metrics]({report['dataset']}.png)",
        "",
    ])


def plot(report, path):
    """One panel per metric, cut-offs on the x axis, a bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = metric_columns(report)
    names = [n for n in METRIC_ORDER if any(c[0] == n for c in columns)]
    models = list(report["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False)
    width = 0.8 / len(models)
    for ax, name in zip(axes[0], names):
        cutoffs = [k for n, k in columns if n == name]
        for i, model in enumerate(models):
            values = [report["models"][model]["test"][f"{name}@{k}"] for k in cutoffs]
            ax.bar([x + (i - (len(models) - 1) / 2) * width for x in range(len(cutoffs))],
                   values, width, label=model)
        ax.set_xticks(range(len(cutoffs)), [f"@{k}" for k in cutoffs])
        ax.set_title(METRIC_NAMES[name])
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{report['dataset']}: test set, full ranking")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)


def write_report(report, report_dir):
    """<report_dir>/<dataset>.json, .md and .png; returns their paths."""
    report_dir = Path(report_dir)
    json_path, md_path, png_path = (report_dir / f"{report['dataset']}{suffix}"
                                    for suffix in (".json", ".md", ".png"))
    write_json_atomic(json_path, report)
    plot(report, png_path)
    atomic_write(md_path, lambda f: f.write(format_markdown(report)), mode="w")
    return [md_path, json_path, png_path]

