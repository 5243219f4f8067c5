"""Hyper-parameter tuning of MIND, or of a RecBole built-in, with RecBole's own HyperTuning.

``python run_recbole_mind.py --hyper --params_file recbole_mind/properties/hyper/MIND.hyper [--model M]
[--dataset D] [--config_files "a.yaml b.yaml"] [--algo exhaustive|random|bayes] [--max_evals N]
[--output_file F] [--key=value ...]``

RecBole's stock ``objective_function`` (in ``recbole.quick_start``) builds models by name through
``get_model``, so it cannot build MIND, and importing it imports ray. Here one trial is one
:func:`recbole_mind.train.run` (the same run path as a plain run, so baselines tune the
same way); everything else is RecBole's: ``recbole.trainer.HyperTuning``, its params-file format
(``name choice [..]`` / ``uniform lo,hi`` / ``quniform lo,hi,q`` / ``loguniform lo,hi``),
``export_result`` and ``plot_hyper``.

Outputs, all next to ``--output_file`` and rewritten after every trial (a stopped search keeps
what it measured):

* ``F``: RecBole's ``export_result`` text, followed by the best parameters so far;
* ``F.trials.jsonl``: one JSON line per trial (parameters, valid and test metrics, epochs,
  seconds per epoch, trial seconds);
* ``F.best.yaml``: the command-line overrides plus the best parameters, usable as a config file;
* ``F.html``: ``plot_hyper``'s plotly chart of the valid score per trial (after the search).
"""

import contextlib
import json
import os
import shutil
import tempfile
import time

import yaml
from recbole.trainer.hyper_tuning import ExhaustiveSearchError, HyperTuning, _validate_space_exhaustive_search

from recbole_mind import train
from recbole_mind.config import LOCATION_KEYS, resolve_model
from recbole_mind.errors import UserError
from recbole_mind.version import __version__

ALGOS = ("exhaustive", "random", "bayes")


def tune(model, dataset, params_file, config_files=None, config_dict=None, algo="exhaustive",
         max_evals=None, early_stop=10, output_file="hyper.result", display=True):
    """Search ``params_file``'s space with RecBole's HyperTuning; one trial = one full run.

    Args:
        model (str): 'MIND' or a RecBole model name.
        dataset (str): dataset name.
        params_file (str): RecBole params file of the search space.
        config_files (list or None): yaml files applied after the project's run defaults.
        config_dict (dict or None): fixed overrides for every trial; a trial's parameters win.
        algo (str): 'exhaustive', 'random' or 'bayes'.
        max_evals (int or None): most trials; None: the whole grid (exhaustive) or 100.
        early_stop (int): trials without improvement before the search stops.
        output_file (str): where the results go (see the module docstring).
        display (bool): also write ``plot_hyper``'s HTML chart to ``output_file + '.html'``.

    Returns:
        dict: ``best_params``, ``best_valid_score``, ``best_valid_result``, ``test_result`` (of the
        best trial), ``trials`` (every trial's record) and the paths written.
    """
    if not os.path.isfile(params_file):
        raise UserError(f"params file {params_file} does not exist: check the path given to --params_file")
    if algo not in ALGOS:
        raise UserError(f"unknown search algorithm '{algo}': use one of {', '.join(ALGOS)}")
    if max_evals is not None and max_evals < 1:
        raise UserError(f"--max_evals must be at least 1, got {max_evals}")
    resolve_model(model)  # an unknown model fails now, not inside the first trial
    config_dict = dict(config_dict or {})
    folder = os.path.dirname(os.path.abspath(output_file))
    os.makedirs(folder, exist_ok=True)
    paths = {
        "output_file": output_file,
        "trials_file": output_file + ".trials.jsonl",
        "best_config_file": output_file + ".best.yaml",
        "display_file": output_file + ".html" if display else None,
    }
    for path in paths.values():
        if path and os.path.exists(path):
            os.remove(path)

    trials = []
    objective = make_objective(model, dataset, config_dict, trials, paths["trials_file"])
    tuner = HyperTuning(objective, params_file=params_file, fixed_config_file_list=config_files,
                        display_file=paths["display_file"], algo=algo,
                        max_evals=max_evals or 100, early_stop=early_stop)
    if algo == "exhaustive":
        # RecBole defines this check but never calls it: without it a 'uniform' line silently
        # turns the grid into a random search of 1 trial.
        try:
            _validate_space_exhaustive_search(tuner.space)
        except ExhaustiveSearchError:
            raise UserError(f"exhaustive search takes only 'choice' lines: rewrite {params_file} "
                            "with choice [...] or use --algo random or --algo bayes") from None
    if max_evals is not None:  # RecBole sets exhaustive's max_evals to the grid size: cap it
        tuner.max_evals = min(tuner.max_evals, max_evals)

    trial = tuner.trial

    def trial_then_export(params):
        # Rewrite the result files after every trial, so a search stopped early keeps its results.
        outcome = trial(params)
        _export(tuner, trials, config_dict, model, dataset, paths)
        return outcome

    tuner.trial = trial_then_export
    seed = str(config_dict.get("seed", 2020))
    with _env("HYPEROPT_FMIN_SEED", seed):  # hyperopt's sampler seed: a search repeats exactly
        tuner.run()
    if not trials:
        raise UserError(f"the search ran no trial: check the search space in {params_file}")
    best = _best_trial(trials)
    return {
        "model": trials[0]["model"],
        "dataset": dataset,
        "algo": algo,
        "version": __version__,
        "best_params": best["params"],
        "best_trial": best["trial"],
        "best_valid_score": best["best_valid_score"],
        "best_valid_result": best["best_valid_result"],
        "test_result": best["test_result"],
        "trials": trials,
        **paths,
    }


def shipped_space(model):
    """The search spaces shipped for ``model``, one per protocol, as a --params_file suggestion."""
    from recbole_mind import properties

    suggestions = []
    for path in sorted(properties.HYPER.glob(f"{model}*.hyper"), key=lambda p: (p.stem != model, p.name)):
        protocol = path.stem[len(model) + 1:]
        if path.stem == model or path.stem[len(model)] == "-":
            suggestions.append(f"recbole_mind/properties/hyper/{path.name}"
                               + (f" (--eval_protocol={protocol})" if protocol else ""))
    if not suggestions:
        return f"F, a RecBole params file of lines like 'learning_rate choice [0.001,0.003]' (none ships for {model})"
    return " or ".join(suggestions)


def make_objective(model, dataset, config_dict=None, trials=None, trials_file=None):
    """RecBole's ``objective_function(config_dict, config_file_list)`` for ``model``.

    A trial runs :func:`train.run` with the fixed ``config_dict`` updated by the trial's
    parameters. Unless ``checkpoint_dir`` is among the fixed overrides, checkpoints go to a
    temporary folder removed after the trial: the test result is still the best epoch's.
    Each trial's record is appended to ``trials`` and, as a JSON line, to ``trials_file``.
    """
    fixed = dict(config_dict or {})
    trials = [] if trials is None else trials

    def objective_function(params, config_file_list=None):
        merged = {**fixed, **params}
        started = time.perf_counter()
        with _checkpoint_dir(merged):
            result = train.run(model, dataset, config_files=config_file_list, config_dict=merged)
        record = {
            "trial": len(trials) + 1,
            "params": {k: _plain(v) for k, v in params.items()},
            **{k: v for k, v in result.items() if k != "saved_model_file"},
            "trial_s": time.perf_counter() - started,
        }
        trials.append(record)
        if trials_file:
            with open(trials_file, "a") as f:
                f.write(json.dumps(record) + "\n")
        print(format_trial(record), flush=True)
        return result

    return objective_function


@contextlib.contextmanager
def _checkpoint_dir(config_dict):
    if "checkpoint_dir" in config_dict:
        yield
        return
    folder = tempfile.mkdtemp(prefix="recbole-mind-trial-")
    config_dict["checkpoint_dir"] = folder
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _env(name, value):
    saved = os.environ.get(name)
    os.environ.setdefault(name, value)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)


def _plain(value):
    """numpy scalars (from hyperopt's samplers) as plain Python values, for JSON and yaml."""
    return value.item() if hasattr(value, "item") else value


def _best_trial(trials):
    bigger = trials[0]["valid_score_bigger"]
    pick = max if bigger else min
    return pick(trials, key=lambda t: t["best_valid_score"])


def _export(tuner, trials, config_dict, model, dataset, paths):
    tuner.export_result(output_file=paths["output_file"])
    best = _best_trial(trials)
    with open(paths["output_file"], "a") as f:
        f.write(f"Best parameters (trial {best['trial']} of {len(trials)}, best valid score "
                f"{best['best_valid_score']:.4f}):\n{tuner.params2str(best['params'])}\n")
    fixed = {}
    for key, value in config_dict.items():
        if key not in LOCATION_KEYS:
            fixed[key] = yaml.safe_load(value) if isinstance(value, str) else value
    header = (f"# {best['model']} on {dataset}: best of {len(trials)} trials by RecBole's HyperTuning "
              f"(valid score {best['best_valid_score']:.4f}, test {_metrics(best['test_result'])})\n")
    with open(paths["best_config_file"], "w") as f:
        f.write(header)
        yaml.dump({**fixed, **{k: _plain(v) for k, v in best["params"].items()}}, f,
                  Dumper=_BlockDumper, sort_keys=False, default_flow_style=False)


class _BlockDumper(yaml.SafeDumper):
    """One ``key: value`` line per key, lists inline (``topk: [10, 20]``), like the shipped yaml files."""


_BlockDumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True))


def _metrics(values):
    return "  ".join(f"{k}: {v:.4f}" for k, v in values.items())


def format_trial(record):
    return (f"trial {record['trial']}: {record['params']}\n"
            f"  {record['epochs_run']} epochs (best {record['best_epoch']}), "
            f"{record['train_s_per_epoch']:.1f} s per epoch, {record['trial_s']:.0f} s in all\n"
            f"  valid: {_metrics(record['best_valid_result'])}\n"
            f"  test:  {_metrics(record['test_result'])}")


def format_summary(summary):
    return "\n".join([
        f"{summary['model']} on {summary['dataset']}: {len(summary['trials'])} trials ({summary['algo']}), "
        f"best is trial {summary['best_trial']}",
        f"best parameters: {summary['best_params']}",
        f"best valid: {_metrics(summary['best_valid_result'])}",
        f"test:       {_metrics(summary['test_result'])}",
        f"results in {summary['output_file']} (+ .trials.jsonl, .best.yaml"
        + (", .html)" if summary["display_file"] else ")"),
    ])
