"""Command line of recbole-mind: ``python run_recbole_mind.py [--model M] [--dataset D] [--key=value ...]``.

Flags follow RecBole's run_recbole.py: ``--model/-m``, ``--dataset/-d``, ``--config_files``
(space-separated yaml paths), and any ``--key=value`` as a RecBole config override. The modes
(train by default; ``--compare``, ``--hyper``, ``--retrieve``, ``--export``, ``--explain``)
each live in their own module; every flag is parsed here.
"""

import argparse
import os
import sys
from dataclasses import fields

import yaml

from recbole_mind import compare, distributed, explain, export, retrieve, train, tune
from recbole_mind.categories import genre_field, item_categories
from recbole_mind.checkpoint import restore
from recbole_mind.config import DEFAULT_DATASET
from recbole_mind.errors import UserError


def build_parser():
    parser = argparse.ArgumentParser(
        prog="run_recbole_mind.py",
        allow_abbrev=False,  # else --split_seed=1, a config key, is read as --split_seeds
        description="Train and evaluate MIND (or a RecBole built-in) with RecBole's pipeline. "
                    "Any --key=value is a RecBole config override, e.g. --epochs=10.",
    )
    parser.add_argument("--model", "-m", default="MIND", help="MIND or a RecBole model name (default MIND)")
    parser.add_argument("--dataset", "-d", default=None,
                        help=f"dataset name (default {DEFAULT_DATASET}, shipped inside recbole: no download)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml config files")
    parser.add_argument("--resume", default=None, metavar="CHECKPOINT",
                        help="continue an interrupted run from the checkpoint it saved (RecBole's resume)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser.add_argument("--torch_threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own count, but never more than the cores "
                             "left free by other jobs; --compare: torch's own count per run)")

    group = parser.add_argument_group("several processes (RecBole's DDP path; gloo on CPU, nccl on CUDA)")
    group.add_argument("--nproc", type=int, default=None, help="processes on this machine (default 1)")
    group.add_argument("--world_size", type=int, default=None,
                       help="processes on all machines (default --nproc)")
    group.add_argument("--ip", default=None, help=f"address of the machine with --group_offset 0 "
                                                  f"(default {distributed.DEFAULT_IP})")
    group.add_argument("--port", type=int, default=None,
                       help="its port (default: a free one; needed with several machines)")
    group.add_argument("--group_offset", type=int, default=None,
                       help="global rank of this machine's first process (default 0)")

    group = parser.add_argument_group("comparison (--compare)")
    group.add_argument("--compare", nargs="+", metavar="MODEL", default=None,
                       help="train and compare these models under one protocol, e.g. --compare MIND "
                            "GRU4Rec SASRec SINE; also the variants " + ", ".join(compare.VARIANTS))
    group.add_argument("--lr_grid", default=compare.DEFAULT_LR_GRID,
                       help="comma-separated learning rates tried for every model; the best on "
                            f"validation is kept (default {compare.DEFAULT_LR_GRID})")
    group.add_argument("--rerun", action="store_true", help="train every run again even if its result file exists")
    group.add_argument("--no_report", action="store_true",
                       help="only train the missing runs (one piece of a comparison); write no report")
    group.add_argument("--time_budget", type=float, default=None, metavar="HOURS",
                       help="stop before an epoch that would end after HOURS and exit with status "
                            "75; the same command continues from the last finished epoch")
    group.add_argument("--split_seeds", default=None, metavar="SEEDS",
                       help="with --eval_protocol=multi_target: comma-separated user-split seeds; every "
                            "run is repeated on each, and the report gives the mean and spread")
    group.add_argument("--results_dir", default=compare.DEFAULT_RESULTS_DIR,
                       help=f"where <protocol>/<dataset>.md and the runs go (default {compare.DEFAULT_RESULTS_DIR})")

    group = parser.add_argument_group("hyper-parameter tuning (--hyper, RecBole's HyperTuning)")
    group.add_argument("--hyper", action="store_true", help="tune the model's hyper-parameters")
    group.add_argument("--params_file", default=None,
                       help="RecBole params file of the search space, e.g. recbole_mind/properties/hyper/MIND.hyper")
    group.add_argument("--algo", default="exhaustive", choices=tune.ALGOS,
                       help="search: exhaustive (grid of 'choice' lines), random or bayes (TPE)")
    group.add_argument("--max_evals", type=int, default=None,
                       help="most trials (default: the whole grid for exhaustive, 100 otherwise)")
    group.add_argument("--early_stop", type=int, default=10,
                       help="stop after this many trials without a better valid score (default 10)")
    group.add_argument("--output_file", default=None, help="result file (default hyper/<model>-<dataset>.result)")

    group = parser.add_argument_group(
        "a trained model (--retrieve, --export, --explain with --checkpoint; the checkpoint is "
        "unpickled, which runs code: load only files you trust)")
    group.add_argument("--checkpoint", metavar="PATH", default=None, help="a MIND checkpoint saved by training")
    group.add_argument("--retrieve", action="store_true", help="write top-k recommendations of every user")
    group.add_argument("--export", metavar="PATH", default=None,
                       help="export the user tower (item_seq, item_seq_len, user_id -> interests, mask) "
                            "as a torch.export program (.pt2)")
    group.add_argument("--explain", action="store_true",
                       help="routing heat maps, capsule health and interest purity of a trained MIND")
    # --topk is also RecBole's evaluation key: without --retrieve it is handed to RecBole as text
    group.add_argument("--topk", dest="retrieve_topk", metavar="N", default=None,
                       help="recommendations per user when retrieving (default 50); otherwise "
                            "RecBole's topk, e.g. --topk=[10,20]")
    group.add_argument("--index", choices=retrieve.INDEX_TYPES, default="flat", help="faiss index (default flat, exact)")
    group.add_argument("--output", metavar="PATH", default="recs.csv", help="recommendations CSV (default recs.csv)")
    group.add_argument("--diversity_lambda", type=float, default=None, metavar="LAMBDA",
                       help="re-rank each user's merged candidates for category diversity (ComiRec's "
                            "greedy aggregation; default 0: by score); in a multi_target run, its test lists")
    group.add_argument("--keep_history", action="store_true",
                       help="allow items of the user's input sequence (default: removed where the model's exclude_history is on)")
    defaults = retrieve.IndexParams()
    for field in fields(retrieve.IndexParams):
        group.add_argument(f"--{field.name}", type=field.type, default=None,
                           help=f"index parameter (default {getattr(defaults, field.name) or 'auto'})")
    group.add_argument("--users", help="comma-separated external user ids to draw (explain)")
    group.add_argument("--output_dir", help="folder for the explain pictures and summary.json "
                                            "(default: next to the checkpoint)")
    return parser


def parse_args(argv):
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for arg in rest:
        key, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if not key or not sep:
            parser.error(f"unrecognised argument {arg!r}: config overrides are written --key=value")
        overrides[key] = value
    if args.retrieve_topk is not None and not args.retrieve:
        overrides["topk"] = args.retrieve_topk
    if args.diversity_lambda is not None and not (args.retrieve or args.export):
        overrides["diversity_lambda"] = args.diversity_lambda  # the protocol's key (multi_target.yaml)
    overrides.update(distributed_overrides(args))
    return args, overrides


def distributed_overrides(args, environ=os.environ):
    """RecBole's DDP keys from --nproc ... --group_offset, or from torchrun's environment."""
    given = {key: value for key, value in (("nproc", args.nproc), ("world_size", args.world_size), ("ip", args.ip),
                                           ("port", args.port), ("offset", args.group_offset)) if value is not None}
    launched = distributed.torchrun_settings(environ)
    if launched and given:
        raise UserError("under torchrun the launcher sets the processes and addresses: drop --nproc, "
                        "--world_size, --ip, --port and --group_offset")
    if launched:
        return launched
    if given.get("nproc", 1) < 1:
        raise UserError(f"--nproc must be 1 or more, got {given['nproc']}")
    return given


def free_cores():
    """Cores this process may use that other jobs do not keep busy (the 1-minute load average)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, cores - int(busy + 0.5))


def set_threads(requested):
    """torch's thread count: ``requested``, or torch's own choice capped at the free cores (two
    jobs each running all-core torch on a shared machine spin against each other, several times
    slower than one thread each)."""
    import torch

    if requested is not None and requested < 1:
        raise UserError(f"--torch_threads must be 1 or more, got {requested}")
    torch.set_num_threads(requested or min(torch.get_num_threads(), free_cores()))
    return torch.get_num_threads()


def run_from_args(args, overrides):
    if "dataset" in overrides or "model" in overrides:
        raise UserError("give the dataset and model as --dataset NAME and --model NAME")
    if not args.compare:  # a comparison sets each run's threads in its own process
        # spawned ranks take this process's count: the free cores shared among them by default
        nproc = int(overrides.get("nproc") or 1) if "local_rank" not in overrides else 1
        set_threads(args.torch_threads or (max(1, free_cores() // nproc) if nproc > 1 else None))
    config_files = args.config_files.split() if args.config_files else None
    dataset = args.dataset or DEFAULT_DATASET
    if args.split_seeds is not None and not args.compare:
        raise UserError("--split_seeds repeats a --compare over user splits: for one run give --split_seed=N")
    if args.compare:
        return compare.compare(args.compare, dataset, args.lr_grid, config_files, overrides,
                               rerun=args.rerun, no_report=args.no_report, torch_threads=args.torch_threads,
                               time_budget=args.time_budget, results_dir=args.results_dir,
                               split_seeds=args.split_seeds)
    if args.hyper:
        return run_tune(args, dataset, config_files, overrides)
    if args.retrieve or args.export:
        return run_retrieve_or_export(args, overrides)
    if args.explain:
        return run_explain(args, overrides)
    result = train.run(args.model, dataset, config_files=config_files, config_dict=overrides,
                       resume_from=args.resume)
    if overrides.get("local_rank", 0) + overrides.get("offset", 0) == 0:  # torchrun: rank 0 reports
        print(format_result(result))
    return result


def run_tune(args, dataset, config_files, overrides):
    if not args.params_file:
        raise UserError("--hyper needs a search space: add --params_file " + tune.shipped_space(args.model))
    summary = tune.tune(args.model, dataset, args.params_file, config_files=config_files,
                        config_dict=overrides, algo=args.algo, max_evals=args.max_evals,
                        early_stop=args.early_stop,
                        output_file=args.output_file or os.path.join("hyper", f"{args.model}-{dataset}.result"))
    print(tune.format_summary(summary))
    return summary


def run_retrieve_or_export(args, overrides):
    unknown = sorted(set(overrides) - {"data_path"})
    if unknown:
        raise UserError(f"--{unknown[0]} cannot change a trained model: retrieval and export accept "
                        f"only --data_path=... besides their own flags")
    if not args.checkpoint:
        raise UserError("--retrieve and --export need --checkpoint saved/MIND-*.pth")
    topn = _positive_int(args.retrieve_topk or "50", "--topk")
    params = retrieve.IndexParams(**{f.name: getattr(args, f.name) for f in fields(retrieve.IndexParams)
                                     if getattr(args, f.name) is not None})
    for field in fields(retrieve.IndexParams):
        value = getattr(params, field.name)
        if field.type is int and value is not None and value < 1:
            raise UserError(f"--{field.name} must be >= 1, got {value}")
    lam = args.diversity_lambda or 0.0
    if lam < 0:
        raise UserError(f"--diversity_lambda must be >= 0, got {lam}")
    genres = (lambda config: [genre_field(config)] if genre_field(config) else []) if lam else ()
    restored = restore(args.checkpoint, "MIND", overrides.get("data_path"), item_fields=genres,
                       purpose="retrieval and export")
    labels = (item_categories(restored.dataset, genre_field(restored.config, restored.dataset))[0]
              if lam else None)
    if args.export:
        export.export_user_tower(restored.model, restored.dataset, args.export)
        print(f"exported the user tower to {args.export}")
    if args.retrieve:
        users, items, scores = retrieve.retrieve_for_dataset(restored.model, restored.dataset, topn, args.index,
                                                             params, exclude_history=restored.model.exclude_history and not args.keep_history,
                                                             labels=labels, lam=lam)
        n_rows = retrieve.write_recommendations(args.output, restored.dataset, users, items, scores)
        print(f"wrote {n_rows} recommendations for {len(users)} users to {args.output} "
              f"(index {args.index}, top {topn})")


def run_explain(args, overrides):
    if not args.checkpoint:
        raise UserError("--explain needs --checkpoint PATH of a trained MIND (saved/MIND-....pth)")
    unknown = sorted(set(overrides) - {"data_path"})
    if unknown:
        raise UserError(f"--{unknown[0]} cannot change a trained model: --explain accepts only "
                        "--data_path=... besides its own flags")
    users = [u for u in (args.users or "").split(",") if u.strip()]
    output_dir = args.output_dir or os.path.splitext(args.checkpoint)[0] + "-explain"
    explainer = explain.load_explainer(args.checkpoint, overrides.get("data_path"))
    if args.dataset and args.dataset != explainer.dataset.dataset_name:
        raise UserError(f"the checkpoint was trained on {explainer.dataset.dataset_name}, not {args.dataset}: "
                        f"drop --dataset")
    if users:
        explainer.user_index(users)  # fail on a bad id before any work
    os.makedirs(output_dir, exist_ok=True)
    report = explain.explain_all(explainer, output_dir, users)
    print(explain.format_report(report))
    return report


def _positive_int(text, flag):
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{flag} must be a whole number of recommendations, got {text!r}") from None
    if value < 1:
        raise UserError(f"{flag} must be >= 1, got {value}")
    return value


def format_result(result):
    def metrics(values):
        return "  ".join(f"{k}: {v:.4f}" for k, v in values.items())

    return "\n".join([
        f"{result['model']} on {result['dataset']}: {result['epochs_run']} epochs, best at epoch "
        f"{result['best_epoch']}, {result['train_s_per_epoch']:.2f} s per training epoch, "
        f"test evaluation {result['eval_s']:.2f} s, {result['torch_threads']} torch thread"
        + ("s" if result["torch_threads"] != 1 else ""),
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
