"""Cost of multi-interest retrieval against catalogue size: faiss indexes vs exact full-sort scoring.

For each catalogue size and vector source, K = 4 interests per user, d = 64, top 50:

* exact: torch scores every item with every active interest, max over interests, top 50
  (what ``MIND.full_sort_predict`` + top-k does); this is the ground truth;
* flat / ivf / hnsw / ivfpq: :func:`recbole_mind.retrieve.retrieve` with a prebuilt index
  (search each active interest, merge by the exact max-interest score, dedupe, top 50).

A query is one user (all of its active interests and the merge); QPS = users per second,
one batch of all query users. recall@50 = |ANN top 50 & exact top 50| / 50, averaged over users.
Index build time is reported apart. No history filtering (it is the same for every method).

Vector sources:
* synthetic: items drawn around cluster centres with skewed cluster sizes and log-normal norms;
  users' 4 interests drawn around 4 random item clusters (all 4 active);
* real: the item vectors and user interests (with their active masks) of a MIND checkpoint
  trained on amazon-videogames (23.7k items). 10k: a random subset of the real items;
  100k / 1M: every real item plus perturbed copies (a random real vector + Gaussian noise of
  0.25 x the per-dimension std of the real vectors, scaled back to unit length when the real
  vectors are unit length: normalize_vectors); queries: interests of random real users.

Usage (from the project root; results/retrieval.md has the commands that produced the committed
figures):
    python -m bench.retrieval --checkpoint saved/MIND-....pth --data_path ../shared/data
    python -m bench.retrieval --tables results/retrieval.json     # its markdown tables
"""

import os

# OpenMP threads that spin while waiting starve everything else on an oversubscribed machine
# (a 10k-item IVF build took 17x longer); set before faiss/torch load their OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from recbole_mind import retrieve  # noqa: E402  (importing the package applies its stack fixes first)
from recbole_mind.checkpoint import load_checkpoint, restore  # noqa: E402
from recbole_mind.histories import user_histories  # noqa: E402
from recbole_mind.model.scoring import merge_interests  # noqa: E402

TOPN = 50
K = 4
DIM = 64
TARGET_RECALL = 0.98
# search settings tried on each built index; the table reports the fastest reaching TARGET_RECALL
SWEEPS = {
    "flat": [{}],
    "hnsw": [{"ef_search": 64}, {"ef_search": 128}, {"ef_search": 256}, {"ef_search": 512}],
    "ivf": [{"nprobe": 8}, {"nprobe": 16}, {"nprobe": 32}, {"nprobe": 64}, {"nprobe": 128}],
    "ivfpq": [{"nprobe": 16, "oversample": 4}, {"nprobe": 32, "oversample": 4},
              {"nprobe": 64, "oversample": 8}, {"nprobe": 128, "oversample": 8}],
}


def synthetic_items(n, rng):
    clusters = max(32, n // 500)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.8  # skewed cluster sizes
    assignment = rng.choice(clusters, n, p=weights / weights.sum())
    items = centres[assignment] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    items *= rng.lognormal(0.0, 0.25, (n, 1)).astype(np.float32)  # popularity-like norm spread
    return items / np.sqrt(DIM), centres


def synthetic_queries(centres, n_users, rng):
    picks = rng.integers(0, len(centres), (n_users, K))
    interests = centres[picks] + 0.6 * rng.standard_normal((n_users, K, DIM)).astype(np.float32)
    return interests / np.sqrt(DIM), np.ones((n_users, K), dtype=bool)


def real_vectors(checkpoint, data_path, n_users, rng):
    """Item vectors (padding row dropped) and interests of random users of a trained MIND."""
    config, dataset, _, _, _, model = restore(checkpoint, "MIND", data_path, purpose="bench.retrieval")
    users, item_seq, item_seq_len, _ = user_histories(dataset, model.max_seq_length)
    pick = np.sort(rng.choice(len(users), n_users, replace=False))
    interests, mask = retrieve.user_interests(model, users[pick], item_seq[pick], item_seq_len[pick])
    with torch.no_grad():
        items = model.item_vectors().numpy()[1:]
    info = {"checkpoint": os.path.basename(checkpoint), "dataset": config["dataset"],
            "real_items": int(len(items)),
            "epochs_trained": int(load_checkpoint(checkpoint)["epoch"]) + 1,
            "active_interests_mean": float(mask.sum(1).mean()),
            "interest_merge": model.interest_merge, "temperature": float(model.temperature)}
    return items, interests, mask, info


def real_catalogue(items, n, rng):
    if n <= len(items):
        return items[np.sort(rng.choice(len(items), n, replace=False))]
    noise = 0.25 * items.std(axis=0, keepdims=True)
    copies = items[rng.integers(0, len(items), n - len(items))]
    copies = copies + noise * rng.standard_normal(copies.shape).astype(np.float32)
    norms = np.linalg.norm(items, axis=1)
    if np.allclose(norms, 1.0, atol=1e-3):  # a normalize_vectors model: copies stay unit vectors too
        copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    return np.concatenate([items, copies])


def exact_topk(interests, mask, items, batch=16, merge="max", temperature=1.0):
    """Exact top-N by the serving score (the max over active interests, or their mixture),
    torch full-sort scoring (ground truth).

    One [B*K, d] x [d, n] matmul per batch of users, masked merge over interests, top-k.
    """
    items_t = torch.from_numpy(items)
    out = []
    for start in range(0, len(interests), batch):
        q = torch.from_numpy(interests[start:start + batch])
        m = torch.from_numpy(mask[start:start + batch])
        scores = (q.reshape(-1, q.size(-1)) @ items_t.t()).view(q.size(0), q.size(1), -1)
        scores = merge_interests(scores, m, merge, temperature)
        out.append(torch.topk(scores, TOPN, dim=1).indices)
    return torch.cat(out).numpy()


def recall(found, truth):
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2).sum(axis=1)
    return float((hits / truth.shape[1]).mean())


def sweep_settings(kind, oversamples=(1,)):
    """The search settings tried on a ``kind`` index: its sweep, each at every ``oversamples``
    depth of the interests' lists (settings that set their own depth keep it)."""
    settings = []
    for setting in SWEEPS[kind]:
        depths = (1,) if "oversample" in setting else oversamples
        settings += [setting if depth == 1 else {**setting, "oversample": depth} for depth in depths]
    return settings


def bench_size(items, interests, mask, indexes, log, max_size, hnsw_metric="l2", merge="max",
               temperature=1.0, oversamples=(1,)):
    """Exact path and every index on one catalogue; labels are rows of ``items``. ``merge`` and
    ``temperature`` set the serving score of both; ``oversamples`` the depths of the lists."""
    # retrieve() treats row 0 as padding: prepend a zero row so item r+1 is catalogue row r
    with_pad = np.concatenate([np.zeros((1, DIM), dtype=np.float32), items])
    started = time.perf_counter()
    truth = exact_topk(interests, mask, items, merge=merge, temperature=temperature) + 1
    exact_s = time.perf_counter() - started
    result = {"n_items": int(len(items)), "queries": int(len(interests)),
              "exact_qps": len(interests) / exact_s}
    log(f"  exact: {result['exact_qps']:.1f} users/s")
    for kind in indexes:
        if len(items) > max_size.get(kind, len(items)):
            log(f"  {kind}: skipped above {max_size[kind]} items")
            continue
        params = retrieve.IndexParams(hnsw_metric=hnsw_metric)
        started = time.perf_counter()
        index = retrieve.build_index(items, kind, params)
        build_s = time.perf_counter() - started
        sweep = []
        for setting in sweep_settings(kind, oversamples):
            p = retrieve.IndexParams(**{**params.__dict__, **setting})
            if kind in ("ivf", "ivfpq"):
                index.nprobe = min(p.nprobe, index.nlist)
            started = time.perf_counter()
            found, _ = retrieve.retrieve(interests, mask, with_pad, TOPN, params=p, built_index=index,
                                         merge=merge, temperature=temperature)
            seconds = time.perf_counter() - started
            sweep.append({"params": setting, "qps": len(interests) / seconds, "recall@50": recall(found, truth)})
            log(f"  {kind} {setting}: {sweep[-1]['qps']:.1f} users/s, recall@50 {sweep[-1]['recall@50']:.4f}")
        good = [s for s in sweep if s["recall@50"] >= TARGET_RECALL]
        best = max(good, key=lambda s: s["qps"]) if good else max(sweep, key=lambda s: s["recall@50"])
        result[kind] = {**best, "build_s": build_s, "speedup_vs_exact": best["qps"] / result["exact_qps"],
                        "index_params": _index_params(index, kind, params), "sweep": sweep}
        del index
    return result


def _index_params(index, kind, params):
    if kind == "hnsw":
        return {"metric": params.hnsw_metric, "M": index.hnsw.nb_neighbors(1),
                "efConstruction": index.hnsw.efConstruction}
    if kind == "ivf":
        return {"nlist": index.nlist}
    if kind == "ivfpq":
        return {"nlist": index.nlist, "pq_m": index.pq.M, "pq_bits": index.pq.nbits}
    return {}


def plot(results, path, threads):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = [s for s in ("synthetic", "real") if results.get(s)]
    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 4.5), squeeze=False)
    for ax, source in zip(axes[0], sources):
        sizes = sorted(results[source], key=int)
        x = [int(s) for s in sizes]
        ax.plot(x, [1e3 / results[source][s]["exact_qps"] for s in sizes], "k-o", label="exact (torch full sort)")
        for kind in SWEEPS:
            have = [s for s in sizes if kind in results[source][s]]
            if have:
                y = [1e3 / results[source][s][kind]["qps"] for s in have]
                r = [results[source][s][kind]["recall@50"] for s in have]
                ax.plot([int(s) for s in have], y, "-o", label=f"{kind} (recall@50 {min(r):.3f}-{max(r):.3f})")
        ax.set(xscale="log", yscale="log", xlabel="catalogue size (items)", ylabel="ms per user (K=4, top 50)",
               title=f"{source} item vectors, d={DIM}, {threads} threads")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=120)
    os.replace(path + ".tmp.png", path)


def markdown_tables(report):
    """The report's figures as markdown tables (one per vector source), for results/retrieval.md:
    each index's fastest setting at the target recall, or every setting tried when the run tried
    several list depths (``--oversample``)."""
    every = len(report["settings"].get("oversample", [1])) > 1
    lines = []
    for title, sizes in (("synthetic", report["sizes"]), ("real", report["real_sizes"])):
        if not sizes:
            continue
        lines += [f"**{title} item vectors**", "",
                  "| items | method | search setting | users/s | x exact | recall@50 | build s |",
                  "|---:|---|---|---:|---:|---:|---:|"]
        for n in sorted(sizes, key=int):
            row = sizes[n]
            lines.append(f"| {int(n):,} | exact (torch) | full sort | {row['exact_qps']:.1f} | 1.0 | 1.0000 | - |")
            for kind in SWEEPS:
                if not any(kind in other for other in sizes.values()):
                    continue  # not benchmarked in this run
                if kind not in row:
                    lines.append(f"| {int(n):,} | {kind} | not run at this size | | | | |")
                    continue
                r = row[kind]
                for tried in (r["sweep"] if every else [r]):
                    setting = ", ".join(f"{k}={v}" for k, v in {**r["index_params"], **tried["params"]}.items()) or "-"
                    lines.append(f"| {int(n):,} | {kind} | {setting} | {tried['qps']:.1f} "
                                 f"| {tried['qps'] / row['exact_qps']:.1f} | {tried['recall@50']:.4f} | {r['build_s']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main():
    if sys.argv[1:2] == ["--tables"]:  # python -m bench.retrieval --tables results/retrieval.json
        with open(sys.argv[2]) as f:
            print(markdown_tables(json.load(f)))
        return
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="MIND checkpoint for the real vectors (optional)")
    parser.add_argument("--data_path", default=None, help="where the checkpoint's dataset lives")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--indexes", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    parser.add_argument("--queries", type=int, default=300, help="users per measurement")
    parser.add_argument("--flat_max", type=int, default=100_000,
                        help="largest catalogue for faiss flat (it costs what the exact path costs)")
    parser.add_argument("--hnsw_max", type=int, default=100_000,
                        help="largest catalogue for hnsw (its build is the slowest by far)")
    parser.add_argument("--threads", type=int, default=2, help="torch and faiss threads")
    parser.add_argument("--hnsw_metric", default="l2", choices=["l2", "ip"],
                        help="hnsw graph on the inner-product-to-L2 reduction (l2) or the raw inner product")
    parser.add_argument("--merge", default=None, choices=["max", "mixture"],
                        help="serving score of the exact path and the merge (default: the checkpoint's, else max)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="tau of the mixture (default: the checkpoint's, else 0.1)")
    parser.add_argument("--oversample", type=int, nargs="+", default=[1],
                        help="depths of each interest's list tried, in multiples of 50")
    parser.add_argument("--no_synthetic", action="store_true", help="measure the checkpoint's vectors only")
    parser.add_argument("--out", default="results/retrieval", help="prefix of the .json and .png written")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]  # the machine is shared: say how busy it was

    def log(message):
        print(f"[{time.perf_counter() - started:7.1f}s] {message}", flush=True)

    if args.oversample and min(args.oversample) < 1:
        parser.error("--oversample values must be >= 1")
    if args.no_synthetic and not args.checkpoint:
        parser.error("--no_synthetic needs --checkpoint")
    results = {"synthetic": {}, "real": {}}
    real = None
    if args.checkpoint:
        real = real_vectors(args.checkpoint, args.data_path, args.queries, rng)
        log(f"real vectors: {real[3]}")
    merging = {"merge": args.merge or (real[3]["interest_merge"] if real else "max"),
               "temperature": args.temperature or (real[3]["temperature"] if real else 0.1),
               "oversamples": tuple(args.oversample)}
    max_size = {"flat": args.flat_max, "hnsw": args.hnsw_max}
    for n in args.sizes:
        if not args.no_synthetic:
            items, centres = synthetic_items(n, rng)
            interests, mask = synthetic_queries(centres, args.queries, rng)
            log(f"synthetic, {n} items")
            results["synthetic"][str(n)] = bench_size(items, interests, mask, args.indexes, log, max_size,
                                                      args.hnsw_metric, **merging)
        if real is not None:
            log(f"real, {n} items")
            results["real"][str(n)] = bench_size(real_catalogue(real[0], n, rng), real[1], real[2],
                                                 args.indexes, log, max_size, args.hnsw_metric, **merging)
    report = {
        "sizes": results["synthetic"],
        "real_sizes": results["real"],
        "settings": {"K": K, "d": DIM, "topk": TOPN, "queries": args.queries, "threads": args.threads,
                     "merge": merging["merge"], "temperature": merging["temperature"],
                     "oversample": list(args.oversample),
                     "target_recall@50": TARGET_RECALL, "real": real[3] if real else None,
                     "faiss": faiss.__version__, "torch": torch.__version__,
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                     "load_average_1min_at_start_and_end": [load_at_start, os.getloadavg()[0]],
                     "cpu_count": os.cpu_count(),
                     "skipped": {"flat_above": args.flat_max, "hnsw_above": args.hnsw_max},
                     "total_s": time.perf_counter() - started,
                     "argv": sys.argv[1:]},
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json.tmp", "w") as f:
        json.dump(report, f, indent=1)
    os.replace(args.out + ".json.tmp", args.out + ".json")
    plot(results, args.out + ".png", args.threads)
    log(f"wrote {args.out}.json and {args.out}.png")


if __name__ == "__main__":
    main()
