"""How distinct a model's interests are against what they rank, over the runs of an experiment log.

Each multi-interest run of a ``bench.mind_experiments`` log that matches ``--where`` becomes one
point: its test users' mean pairwise interest cosine against its test Recall@50, beside the mean
Recall@50 of the one-interest runs named by ``--reference`` (the same split, loss and budget:
the command states which). The issue's two goals for the multi-target protocol are a region of
this plane: cosine at most 0.7 and Recall@50 at least 1.10x one interest. Writes ``OUT.md``,
``OUT.json`` and ``OUT.png``; trains nothing.

Usage (from the project root):
    python -m bench.interest_tradeoff --log results/experiments/amazon-videogames-multi_target.jsonl \
        --where split_seed=2020 loss_type=SSM --reference 2026-12-02_mt_ssm_pop_k1 \
        --out results/multi_target/tradeoff_amazon-videogames_ssm
"""

import argparse
import json
import shlex
import sys

from bench.mind_experiments import parse_overrides, read_log
from bench.tool_errors import user_errors_exit_2
from recbole_mind.errors import UserError

COSINE_GOAL = 0.7
RATIO_GOAL = 1.10


def setting(record, key):
    """A run's value of ``key``: its user split's seed for ``split_seed``, else what the run resolved
    (MIND's keys), else its overrides; ``None`` where the run names no value."""
    if key == "split_seed":
        return (record.get("split") or {}).get("seed")
    for part in ("resolved", "overrides"):
        if key in (record.get(part) or {}):
            return record[part][key]
    return None


def matches(record, where, without):
    return (all(setting(record, key) == value for key, value in where.items())
            and not any(key in (record.get("overrides") or {}) for key in without))


def tradeoff(records, where, without, reference_tags):
    """(reference Recall@50, points): ``points`` one dict a matching multi-interest run, by cosine."""
    by_tag = {record["tag"]: record for record in records}
    missing = [tag for tag in reference_tags if tag not in by_tag]
    if missing:
        raise UserError(f"--reference names runs the log does not hold: {', '.join(missing)}")
    several = [tag for tag in reference_tags if setting(by_tag[tag], "interest_num") != 1]
    if several:
        raise UserError(f"--reference runs must have interest_num 1: {', '.join(several)}")
    reference = sum(by_tag[tag]["test"]["recall@50"] for tag in reference_tags) / len(reference_tags)
    points = []
    for record in records:
        cosine = (record.get("interest_health") or {}).get("mean_cosine")
        if (setting(record, "interest_num") or 1) < 2 or cosine is None or not matches(record, where, without):
            continue
        recall = record["test"]["recall@50"]
        points.append({
            "tag": record["tag"], "interest_num": setting(record, "interest_num"),
            "interest_cosine": round(cosine, 4), "recall@50": recall,
            "recall@20": record["test"].get("recall@20"), "ratio": round(recall / reference, 4),
            "both_goals": bool(cosine <= COSINE_GOAL and recall >= RATIO_GOAL * reference),
        })
    return reference, sorted(points, key=lambda point: point["interest_cosine"])


def rank_correlation(points):
    """Spearman's rank correlation of the runs' interest cosine and Recall@50 (pandas computes it;
    ties share their mean rank); None for fewer than three runs."""
    if len(points) < 3:
        return None
    import pandas as pd

    runs = pd.DataFrame([(p["interest_cosine"], p["recall@50"]) for p in points])
    return round(float(runs[0].corr(runs[1], method="spearman")), 3)


def write(out, command, reference, reference_tags, points):
    rows = [f"| {i} | `{p['tag']}` | {p['interest_num']} | {p['interest_cosine']:.3f} | {p['recall@50']:.4f} | "
            f"{p['ratio']:.2f}x |" for i, p in enumerate(points, 1)]
    reached = sum(p["both_goals"] for p in points)
    rho = rank_correlation(points)
    text = "\n".join([
        f"# Interest cosine against Recall@50: {out.rsplit('/', 1)[-1]}", "",
        "```bash", command, "```", "",
        f"One interest ({', '.join(f'`{tag}`' for tag in reference_tags)}): test Recall@50 {reference:.4f}. "
        f"Runs with cosine at most {COSINE_GOAL} and Recall@50 at least {RATIO_GOAL:.2f}x that: "
        f"{reached} of {len(points)}. Rank correlation of cosine and Recall@50 over the runs: "
        f"{'-' if rho is None else rho}.", "",
        "| # | run | K | interest cosine | Recall@50 | over one interest |", "|---|---|---|---|---|---|",
        *rows, ""])
    with open(out + ".md", "w", encoding="utf-8") as f:
        f.write(text)
    with open(out + ".json", "w", encoding="utf-8") as f:
        json.dump({"command": command, "reference_tags": reference_tags, "reference_recall@50": reference,
                   "goals": {"interest_cosine_at_most": COSINE_GOAL, "ratio_at_least": RATIO_GOAL},
                   "rank_correlation": rho,
                   "runs": points}, f, indent=1)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.axhline(reference, color="grey", lw=1, label="one interest")
    ax.axhline(RATIO_GOAL * reference, color="grey", lw=1, ls="--", label=f"{RATIO_GOAL:.2f}x one interest")
    ax.axvline(COSINE_GOAL, color="tab:red", lw=1, ls=":", label=f"cosine {COSINE_GOAL}")
    low, high = ax.get_xlim()[0], max(RATIO_GOAL * reference, *(p["recall@50"] for p in points)) * 1.02
    ax.fill_between([min(low, 0.0), COSINE_GOAL], RATIO_GOAL * reference, high, color="tab:green", alpha=0.12,
                    label="both goals")
    ax.scatter([p["interest_cosine"] for p in points], [p["recall@50"] for p in points], color="tab:blue", zorder=3)
    for i, p in enumerate(points, 1):
        ax.annotate(str(i), (p["interest_cosine"], p["recall@50"]), textcoords="offset points", xytext=(4, 3),
                    fontsize=8)
    ax.set_xlim(max(0.0, min(p["interest_cosine"] for p in points) - 0.05), 1.0)
    ax.set_ylim(top=high)
    ax.set_xlabel("test users' mean pairwise interest cosine")
    ax.set_ylabel("test Recall@50")
    ax.set_title(out.rsplit("/", 1)[-1] + " (numbers: the table's runs)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(out + ".png", dpi=120)
    plt.close(fig)


@user_errors_exit_2
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.interest_tradeoff", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", required=True, help="a bench.mind_experiments JSONL log")
    parser.add_argument("--where", nargs="*", default=[], metavar="KEY=VALUE",
                        help="keep runs with these settings (split_seed: the user split's seed)")
    parser.add_argument("--without", nargs="*", default=[], metavar="KEY",
                        help="drop runs whose overrides set any of these keys")
    parser.add_argument("--reference", nargs="+", required=True, metavar="TAG",
                        help="one-interest runs of the log to compare with (their mean)")
    parser.add_argument("--out", required=True, help="output path without extension")
    args = parser.parse_args(argv)
    run(args, argv if argv is not None else sys.argv[1:])


def run(args, argv):
    try:
        records = read_log(args.log)
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read --log {args.log} ({error}): name a bench.mind_experiments JSONL log") from None
    where = parse_overrides(args.where, "--where", "--where split_seed=2020")
    reference, points = tradeoff(records, where, args.without, args.reference)
    if not points:
        raise UserError("no multi-interest run with interest health matches --where and --without: loosen them")
    command = "python -m bench.interest_tradeoff " + shlex.join(argv)
    write(args.out, command, reference, args.reference, points)
    with open(args.out + ".md", encoding="utf-8") as f:
        print(f.read())

if __name__ == "__main__":
    main()
