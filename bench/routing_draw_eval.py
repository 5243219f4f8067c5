"""How much a trained MIND's test figures depend on its fixed evaluation routing draw.

MIND_SPEC fixes the routing's start logits in evaluation (one N(0, sigma^2) draw per position,
seeded by ``routing_seed`` and saved with the model), so a user always gets the same interests.
This evaluates one checkpoint on the test set (every row's input sequence removed from the
ranking, as in ``bench.bucket_eval``) with
- the draw it was saved with,
- fresh draws from other seeds (the same sigma),
- all-zero start logits (every behaviour split evenly at the start),
- a new random draw for every row and batch (the training-time behaviour),
and prints NDCG@10 and Recall@50 of each: the spread over seeds is the noise the fixed draw
puts into any comparison.

Usage (from the project root):
    python -m bench.routing_draw_eval --checkpoint saved/compare/amazon-videogames/MIND_lr0.003/MIND-....pth \
        --seeds 1,2,3,4 --data_path ../shared/data
"""

import argparse

from bench.bucket_eval import load, metrics, test_ranks
from bench.tool_errors import user_errors_exit_2
from recbole_mind.errors import UserError


@user_errors_exit_2
def main():
    parser = argparse.ArgumentParser(prog="python -m bench.routing_draw_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a MIND checkpoint written by RecBole's trainer")
    parser.add_argument("--seeds", default="1,2,3,4", help="comma-separated seeds of fresh draws")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data_path", default=None,
                        help="folder holding the checkpoint's dataset, if not where it was trained")
    args = parser.parse_args()

    import torch

    from recbole_mind.model import MIND

    torch.set_num_threads(args.threads)
    model, test_data, _ = load(args.checkpoint, args.data_path)
    if not isinstance(model, MIND):
        raise UserError(f"{args.checkpoint} is a {type(model).__name__} checkpoint, not MIND")
    routing = model.routing
    saved = routing.eval_logits.clone()

    def evaluate():
        _, _, _, ranks = test_ranks(model, test_data)
        return metrics(ranks)

    rows = [("saved draw", evaluate())]
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        generator = torch.Generator().manual_seed(seed)
        routing.eval_logits.copy_(torch.randn(saved.shape, generator=generator) * routing.init_std)
        rows.append((f"draw of seed {seed}", evaluate()))
    routing.eval_logits.zero_()
    rows.append(("zero start logits", evaluate()))
    routing.eval_logits.copy_(saved)
    torch.manual_seed(0)
    routing.train()  # the routing alone: a fresh draw per row, as in training; the rest stays in eval
    rows.append(("a fresh draw per row", evaluate()))
    routing.eval()

    print(f"sigma {routing.init_std}, routing_init {routing.init}")
    print("| start logits | test NDCG@10 | test Recall@50 |")
    print("|---|---|---|")
    for name, (ndcg, recall) in rows:
        print(f"| {name} | {ndcg:.4f} | {recall:.4f} |")
    seeds = [r for name, r in rows if name.startswith("draw of seed") or name == "saved draw"]
    ndcgs, recalls = [r[0] for r in seeds], [r[1] for r in seeds]
    print(f"\nover {len(seeds)} fixed draws: NDCG@10 {min(ndcgs):.4f}-{max(ndcgs):.4f}, "
          f"Recall@50 {min(recalls):.4f}-{max(recalls):.4f}")


if __name__ == "__main__":
    main()
