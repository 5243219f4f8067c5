"""Command line of recbole-mind: ``python run_recbole_mind.py [--model M] [--dataset D] [--key=value ...]``.

Flags follow RecBole's run_recbole.py: ``--model/-m``, ``--dataset/-d``, ``--config_files``
(space-separated yaml paths), and any ``--key=value`` as a RecBole config override.
"""

import argparse
import importlib
import sys

import yaml

from recbole_mind.errors import UserError

# Each extra mode (--compare, --hyper, --retrieve, --explain) lives in its own module with
#   add_arguments(parser)            -> adds its flags
#   selected(args) -> bool           -> whether the parsed flags ask for this mode
#   main(args, overrides) -> None    -> runs it (raises UserError on bad input)
MODE_MODULES = [
    "recbole_mind.retrieval",  # first: it hands a bare --topk=... back to the other modes as an override
    "recbole_mind.compare",
    "recbole_mind.hyper",
    "recbole_mind.explain",
]


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="run_recbole_mind.py",
        description="Train and evaluate MIND (or a RecBole built-in) with RecBole's pipeline. "
                    "Any --key=value is a RecBole config override, e.g. --epochs=10.",
    )
    parser.add_argument("--model", "-m", default="MIND", help="MIND or a RecBole model name (default MIND)")
    parser.add_argument("--dataset", "-d", default=None,
                        help="dataset name (default ml-100k, shipped inside recbole: no download)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml config files")
    parser.add_argument("--resume", default=None, metavar="CHECKPOINT",
                        help="continue an interrupted run from the checkpoint it saved (RecBole's resume)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    for module in modes():
        module.add_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for arg in rest:
        key, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if not key or not sep:
            parser.error(f"unrecognised argument {arg!r}: config overrides are written --key=value")
        overrides[key] = value
    return args, overrides


def modes():
    return [importlib.import_module(name) for name in MODE_MODULES]


def run_from_args(args, overrides):
    from recbole_mind import quick_start

    for module in modes():
        if module.selected(args):
            return module.main(args, overrides)
    if "dataset" in overrides or "model" in overrides:
        raise UserError("give the dataset and model as --dataset NAME and --model NAME")
    config_files = args.config_files.split() if args.config_files else None
    result = quick_start.run(args.model, args.dataset or quick_start.DEFAULT_DATASET,
                             config_files=config_files, config_dict=overrides, resume_from=args.resume)
    print(format_result(result))
    return result


def format_result(result):
    def metrics(values):
        return "  ".join(f"{k}: {v:.4f}" for k, v in values.items())

    return "\n".join([
        f"{result['model']} on {result['dataset']}: {result['epochs_run']} epochs, best at epoch "
        f"{result['best_epoch']}, {result['train_s_per_epoch']:.2f} s per training epoch, "
        f"test evaluation {result['eval_s']:.2f} s",
        f"best valid: {metrics(result['best_valid_result'])}",
        f"test:       {metrics(result['test_result'])}",
    ])


def main(argv=None):
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run_from_args(args, overrides)
    except (UserError, ValueError, KeyError, FileNotFoundError, yaml.YAMLError) as e:
        if args.debug:
            raise
        message = (e.args[0] if isinstance(e, KeyError) and e.args else str(e)).strip() or type(e).__name__
        print(f"error: {message.splitlines()[0]}", file=sys.stderr)
        return 2
    return 0
