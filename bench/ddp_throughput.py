"""Training throughput on one and on several processes (RecBole's DDP path, gloo on the CPU).

For each model and process count, one run in a fresh process (so its memory is its own):
``--epochs`` training epochs on the dataset without validation (``eval_step=0``), each process
with ``--threads`` torch threads; samples/s is the training rows of an epoch over its mean wall
time (global rank 0's clock), memory the peak resident set of each rank.

Usage (from the project root, on an otherwise idle machine):
    python -m bench.ddp_throughput --dataset amazon-videogames --data_path ../shared/data \
        --models MIND,GRU4Rec --nprocs 1,2 --out results/timing/ddp/amazon-videogames

``--repeats N`` runs the whole list N times, one after another, each speed-up against the same
round's one-process run: on a shared machine one process's epoch time drifts between runs, and
the spread of the rounds is the figure's own uncertainty.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def one(model, dataset, data_path, nproc, threads, epochs):
    """The run's figures as a dict (in this process: the bench calls it in a fresh one)."""
    from recbole_mind.cli import set_threads
    from recbole_mind.distributed import peak_rss_mb
    from recbole_mind.train import run

    set_threads(threads)
    config = {"epochs": epochs, "eval_step": 0, "show_progress": False, "state": "WARNING",
              "checkpoint_dir": os.path.join("saved", "ddp_throughput")}
    if data_path:
        config["data_path"] = data_path
    if nproc > 1:
        config["nproc"] = nproc
    result = run(model, dataset, config_dict=config)
    seconds = result["epoch_seconds"]
    memory = result["distributed"]["rank_peak_rss_mb"] if nproc > 1 else [round(peak_rss_mb(), 1)]
    return {"model": model, "nproc": nproc, "threads_per_process": threads, "train_rows": result["train_rows"],
            "epoch_seconds": seconds, "samples_per_s": result["train_rows"] * len(seconds) / sum(seconds),
            "rank_peak_rss_mb": memory, "test_ndcg@10": result["test_result"].get("ndcg@10")}


def markdown(rows, command):
    lines = ["# Training throughput, one and several processes", "", f"Command: `{command}`", "",
             "Samples/s: training rows of one epoch over the mean epoch wall time; speed-up over one "
             "process of the same model; memory: peak resident set per rank (MB).", "",
             "| Round | Model | processes x threads | epoch s | samples/s | speed-up | peak RSS per rank MB |",
             "|---|---|---|---|---|---|---|"]
    single = {(r["model"], r.get("round", 1)): r["samples_per_s"] for r in rows if r["nproc"] == 1}
    for r in rows:
        key = (r["model"], r.get("round", 1))
        speedup = r["samples_per_s"] / single[key] if key in single else float("nan")
        mean_s = sum(r["epoch_seconds"]) / len(r["epoch_seconds"])
        lines.append(f"| {r.get('round', 1)} | {r['model']} | {r['nproc']} x {r['threads_per_process']} | {mean_s:.1f} | "
                     f"{r['samples_per_s']:.0f} | {speedup:.2f}x | "
                     f"{', '.join(f'{m:.0f}' for m in r['rank_peak_rss_mb'])} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--models", default="MIND,GRU4Rec")
    parser.add_argument("--nprocs", default="1,2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the whole list")
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "NPROC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.dataset, args.data_path, int(args.one[1]), args.threads,
                             args.epochs)))
        return
    rows = []
    for round_, model, nproc in ((r, m, int(n)) for r in range(1, args.repeats + 1)
                                 for m in args.models.split(",") for n in args.nprocs.split(",")):
        command = [sys.executable, "-m", "bench.ddp_throughput", "--one", model, str(nproc),
                   "--dataset", args.dataset, "--threads", str(args.threads), "--epochs", str(args.epochs)]
        if args.data_path:
            command += ["--data_path", args.data_path]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"error: {model} on {nproc} processes failed: {done.stderr.strip()[-500:]}")
        rows.append({"round": round_, **json.loads(done.stdout.strip().splitlines()[-1])})
        print(rows[-1], flush=True)
    command = (f"python -m bench.ddp_throughput --dataset {args.dataset}"
               + (f" --data_path {args.data_path}" if args.data_path else "")
               + f" --models {args.models} --nprocs {args.nprocs} --threads {args.threads} --epochs {args.epochs}"
               + (f" --repeats {args.repeats}" if args.repeats > 1 else "")
               + (f" --out {args.out}" if args.out else ""))
    print(markdown(rows, command))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(rows, command))


if __name__ == "__main__":
    main()
