"""One MIND (or built-in) experiment: train with some overrides, append the figures to a JSONL log.

Each call is one run through recbole_mind.train.run (RecBole's loaders, trainer and
evaluators), with one torch thread, so that runs started one after another are comparable. A tag
already in the log is skipped, so a list of calls can be restarted after an interruption.

Usage (from the project root):
    python -m bench.mind_experiments --log results/experiments/ml-100k.jsonl --tag defaults_lr0.003 \
        --dataset ml-100k learning_rate=0.003 epochs=20

docs/experiments.md tabulates the logs (``--table LOG`` prints the markdown rows).
"""

import argparse
import json
import time
from pathlib import Path

import yaml

from bench.tool_errors import user_errors_exit_2
from recbole_mind.errors import UserError

METRICS = ("recall@10", "recall@50", "ndcg@10", "ndcg@50", "mrr@10")
# the test columns of --table, where the log's runs hold them (multi-target runs: @20 and @50)
TABLE_METRICS = ("recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@50", "mrr@10", "hit@50")


def parse_overrides(pairs, option="override", example="learning_rate=0.003"):
    """``key=value`` pairs as a dict, the values read as YAML; a malformed pair is a UserError."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{option} takes KEY=VALUE, got {pair!r}: e.g. {example}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def add_pipeline_arguments(parser):
    """--model, --dataset, --threads and key=value overrides, for build_pipeline (profilers)."""
    parser.add_argument("--model", default="MIND")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", metavar="key=value")


def build_pipeline(args):
    """(config, train_data, test_data, model) the way run_recbole_mind.py builds them, with
    ``args.threads`` torch threads."""
    import torch
    from recbole.utils import init_seed

    from recbole_mind.config import build_config, resolve_model
    from recbole_mind.data import prepare_data

    torch.set_num_threads(args.threads)
    config = build_config(args.model, args.dataset, config_dict=parse_overrides(args.overrides))
    init_seed(config["seed"], config["reproducibility"])
    _, train_data, _, test_data = prepare_data(config)
    return config, train_data, test_data, resolve_model(args.model)(config, train_data._dataset)


def read_log(log):
    """The records of a JSONL experiment log, in order."""
    return [json.loads(line) for line in Path(log).read_text(encoding="utf-8").splitlines() if line.strip()]


def done_tags(log):
    if not log.is_file():
        return set()
    return {record["tag"] for record in read_log(log)}


def run_one(args, overrides, model=None, config_files=None):
    """One run of ``model`` (default ``args.model``: a name, or a model class with its
    ``config_files``) as a log record."""
    import torch

    from recbole_mind.config import build_config
    from recbole_mind.train import run

    model = model or args.model

    torch.set_num_threads(args.threads)
    config_dict = {"checkpoint_dir": f"/tmp/mind_experiments/{args.tag}", "show_progress": False,
                   **overrides}
    resolved = None
    if model == "MIND":  # every MIND key as this run used it: defaults change over time
        from recbole_mind.model.hyper_parameters import read_hyper_parameters

        config = build_config(model, args.dataset, config_dict=config_dict)
        resolved = {**vars(read_hyper_parameters(config)), "learning_rate": config["learning_rate"],
                    "epochs": config["epochs"]}
    started = time.time()
    result = run(model, args.dataset, config_files=config_files, config_dict=config_dict)
    return {
        "tag": args.tag, "model": model if isinstance(model, str) else model.__name__, "dataset": args.dataset, "overrides": overrides,
        "resolved": resolved,
        "valid": result["best_valid_result"], "test": result["test_result"],
        "interest_health": result.get("interest_health"),
        "split": {k: v for k, v in result["split"].items() if not k.endswith("_users")} if "split" in result else None,
        "epochs_run": result["epochs_run"], "best_epoch": result["best_epoch"],
        "train_s_per_epoch": round(result["train_s_per_epoch"], 2), "eval_s": round(result["eval_s"], 3),
        "wall_s": round(time.time() - started, 1), "threads": args.threads,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def table(log):
    """Markdown rows of a log: the test metrics its runs hold (leave-one-out or multi-target),
    validation on the protocol's own metric."""
    rows = read_log(log)
    metrics = [m for m in TABLE_METRICS if any(m in r["test"] for r in rows)]
    valid = next((m for m in ("ndcg@10", "recall@50") if any(m in r["valid"] for r in rows)), None)
    print(f"| tag | overrides | valid {valid} | " + " | ".join(f"test {m}" for m in metrics)
          + " | best epoch / run | train s/epoch |")
    print("|---" * (len(metrics) + 5) + "|")
    for r in rows:
        overrides = ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
        cells = " | ".join(cell(r["test"].get(m)) for m in metrics)
        print(f"| {r['tag']} | {overrides} | {cell(r['valid'].get(valid))} | {cells} | "
              f"{r['best_epoch']} / {r['epochs_run']} | "
              + ("-" if r["train_s_per_epoch"] is None else f"{r['train_s_per_epoch']:.1f}") + " |")


def cell(value):
    return "-" if value is None else f"{value:.4f}"


@user_errors_exit_2
def main():
    parser = argparse.ArgumentParser(prog="python -m bench.mind_experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path)
    parser.add_argument("--tag")
    parser.add_argument("--model", default="MIND")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", metavar="LOG", help="print the markdown table of a log and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    if args.table:
        return table(args.table)
    if not args.log or not args.tag:
        parser.error("--log and --tag are required to run an experiment")
    if args.tag in done_tags(args.log):
        print(f"{args.tag}: already in {args.log}, skipped")
        return
    append_record(args.log, run_one(args, parse_overrides(args.overrides)))


def append_record(log, record):
    """Append a run's record to the JSONL log and print its summary."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    health = record.get("interest_health") or {}
    print(json.dumps({k: record[k] for k in ("tag", "epochs_run", "best_epoch", "train_s_per_epoch")}),
          {m: round(v, 4) for m, v in record["test"].items() if m in METRICS or "@50" in m},
          {k: None if v is None else round(v, 3) for k, v in health.items()})


if __name__ == "__main__":
    main()
