"""How large a trained MIND's capsules are, by history length: is the squash in its linear range?

squash(z) = |z|^2 / (1 + |z|^2) * z / |z| shrinks a capsule with |z| << 1 quadratically (a short
history of small item vectors would reach the interest tower as almost nothing, leaving its bias:
a popularity ranking) and only normalises one with |z| >> 1. This prints, for the test row of
every user, the median |z| and |u| = |squash(z)| of the first interest and the norm of the
interest vector, per bucket of history length, and |H(0)| (what a zero capsule would give).

Usage (from the project root):
    python -m bench.capsule_norms --checkpoint saved/compare/amazon-videogames/MIND_lr0.003/MIND-....pth \
        --data_path ../shared/data
"""

import argparse

from bench.bucket_eval import BUCKETS
from bench.tool_errors import user_errors_exit_2


@user_errors_exit_2
def main():
    parser = argparse.ArgumentParser(prog="python -m bench.capsule_norms", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a MIND checkpoint written by RecBole's trainer")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data_path", default=None,
                        help="folder holding the checkpoint's dataset, if not where it was trained")
    args = parser.parse_args()

    import torch

    from recbole_mind.explain import load_explainer

    torch.set_num_threads(args.threads)
    explainer = load_explainer(args.checkpoint, data_path=args.data_path)
    rows, model = explainer.rows, explainer.model
    user = rows[explainer.uid_field] if model.user_profile is not None else None
    seq, lengths = rows[model.ITEM_SEQ], rows[model.ITEM_SEQ_LEN]
    with torch.no_grad():
        table = model.item_vectors()
        interests, _, _, capsules = model.routing_details(seq, lengths, user)
        u = capsules[:, 0].norm(dim=-1)
        z = (u / (1.0 - u).clamp(min=1e-9)).sqrt()  # |u| = |z|^2 / (1 + |z|^2)
        v = interests[:, 0].norm(dim=-1)
        width = model.interest_tower[0].in_features if len(model.interest_tower) else model.embedding_size
        zero = model.interest_tower(torch.zeros(1, width)).norm()
    print(f"median |e_i| {table[1:].norm(dim=1).median():.3f}, median |S e_i| "
          f"{model.routing.bilinear(table[1:]).norm(dim=1).median():.3f}, |H(0)| {float(zero):.3f}")
    print("| history n | users | median abs z_1 | median abs u_1 | median abs v_1 |")
    print("|---|---|---|---|---|")
    for low, high in BUCKETS:
        rows_in = (lengths >= low) & (lengths <= high)
        if bool(rows_in.any()):
            name = str(low) if low == high else f"{low}-{high}"
            print(f"| {name} | {int(rows_in.sum())} | {z[rows_in].median():.3f} | {u[rows_in].median():.3f} | "
                  f"{v[rows_in].median():.3f} |")


if __name__ == "__main__":
    main()
