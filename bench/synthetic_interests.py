"""A dataset whose users have a known number of separate interests, in RecBole's atomic format.

Whether several interest vectors can beat one depends on the data: a user whose later items a
single vector ranks as well gives K interests nothing to divide. This writes data where the
answer is known: items fall into ``--clusters`` clusters; every user draws ``--interests``
distinct clusters and a history of ``--min_length``..``--max_length`` items, each step an item of
one of the user's clusters (chosen uniformly), the item by Zipf popularity within the cluster,
never one the user already has. The cluster is the item's ``genre`` (Diversity@N, genre purity).
Run the multi-target comparison on it to see what K interests earn as the users' interests grow
in number; the script prints the ceiling: Recall@50 of a ranking that knows each user's clusters.

Usage (from the project root):
    python -m bench.synthetic_interests --out /tmp/synthetic --interests 6
    python run_recbole_mind.py --compare MIND MIND-K1 --dataset synthetic-interests-6 \\
        --data_path=/tmp/synthetic --eval_protocol=multi_target --lr_grid 0.003 --epochs=20 --torch_threads 1
"""

import argparse
import os

import numpy as np


def zipf_popularity(cluster_size, zipf):
    """[cluster_size]: the weight of each item of a cluster by its rank, 1 / rank^zipf."""
    return 1.0 / np.arange(1, cluster_size + 1) ** zipf


def histories(rng, users, clusters, cluster_size, interests, min_length, max_length, zipf):
    """Per user, (item ids 1..clusters * cluster_size in time order, the user's clusters)."""
    popularity = zipf_popularity(cluster_size, zipf)
    for _ in range(users):
        own = rng.choice(clusters, size=interests, replace=False)
        length = int(rng.integers(min_length, max_length + 1))
        left = {c: popularity.copy() for c in own}  # unconsumed items' weights per cluster
        items = []
        for _ in range(length):
            open_clusters = [c for c in own if left[c].sum() > 0]
            cluster = open_clusters[int(rng.integers(len(open_clusters)))]
            weights = left[cluster]
            pick = int(rng.choice(cluster_size, p=weights / weights.sum()))
            weights[pick] = 0.0
            items.append(1 + cluster * cluster_size + pick)
        yield items, own


def oracle_recall(rows, cluster_size, popularity, n=50):
    """Mean Recall@n over all users of a ranking that knows each user's clusters and the items'
    popularity (the multi-target split: the first floor(0.8 n) items in, the rest the targets):
    the ceiling a model of this data approaches."""
    recalls = []
    for items, own in rows:
        cut = (4 * len(items)) // 5
        seen, targets = set(items[:cut]), set(items[cut:]) - set(items[:cut])
        if not targets:
            continue
        candidates = [1 + c * cluster_size + i for c in own for i in range(cluster_size)]
        candidates = [item for item in candidates if item not in seen]
        candidates.sort(key=lambda item: -popularity[(item - 1) % cluster_size])
        recalls.append(len(targets.intersection(candidates[:n])) / len(targets))
    return float(np.mean(recalls))


def write(out, name, rows, clusters, cluster_size):
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, (items, _) in enumerate(rows, start=1):
            f.writelines(f"{user}\t{item}\t{step}\n" for step, item in enumerate(items))
    with open(os.path.join(folder, f"{name}.item"), "w") as f:
        f.write("item_id:token\tgenre:token\n")
        f.writelines(f"{1 + i}\t{i // cluster_size}\n" for i in range(clusters * cluster_size))
    return folder


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.synthetic_interests", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write <name>/<name>.inter and .item into")
    parser.add_argument("--interests", type=int, default=4, help="clusters per user")
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--cluster_size", type=int, default=50)
    parser.add_argument("--min_length", type=int, default=30)
    parser.add_argument("--max_length", type=int, default=60)
    parser.add_argument("--zipf", type=float, default=1.0, help="popularity exponent within a cluster")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 1 <= args.interests <= args.clusters:
        parser.error(f"--interests must be between 1 and --clusters ({args.clusters})")
    if args.max_length > args.interests * args.cluster_size or args.min_length > args.max_length:
        parser.error("need --min_length <= --max_length <= --interests * --cluster_size (no item twice)")
    rng = np.random.default_rng(args.seed)
    rows = list(histories(rng, args.users, args.clusters, args.cluster_size, args.interests,
                          args.min_length, args.max_length, args.zipf))
    name = f"synthetic-interests-{args.interests}"
    folder = write(args.out, name, rows, args.clusters, args.cluster_size)
    print(f"{folder}: {args.users} users, {args.clusters * args.cluster_size} items, "
          f"{sum(len(items) for items, _ in rows)} interactions, {args.interests} clusters a user; "
          f"a ranking by the user's clusters and popularity: Recall@50 "
          f"{oracle_recall(rows, args.cluster_size, zipf_popularity(args.cluster_size, args.zipf)):.4f}")


if __name__ == "__main__":
    main()
