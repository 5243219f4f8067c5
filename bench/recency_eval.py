"""How much of a trained MIND's test ranking comes from the most recent behaviours.

MIND routes a bag of behaviours: the order of the history plays no part. This evaluates one
trained checkpoint on the test set with its interests built from only the last ``m`` behaviours
of each row (for several m), always removing the whole input sequence from the ranking as
``exclude_history`` does, through RecBole's own ``Trainer.evaluate``. No training: if the last
few behaviours alone rank the test item as well as the whole history, the history's order
(recency) is signal that an order-aware model (GRU4Rec, SASRec) can use and MIND cannot.

Usage (from the project root):
    python -m bench.recency_eval --checkpoint saved/compare/amazon-videogames/MIND_lr0.003/MIND-....pth \
        --last 5,10,20,50 --data_path ../shared/data
"""

import argparse

from bench.tool_errors import user_errors_exit_2


def keep_last(interaction, seq_field, len_field, m):
    """A copy of ``interaction`` whose sequences hold only their last ``m`` behaviours, left-aligned."""
    import torch
    from recbole.data.interaction import Interaction

    seq, length = interaction[seq_field], interaction[len_field]
    kept = length.clamp(max=m)
    positions = torch.arange(seq.size(1), device=seq.device).unsqueeze(0)
    index = ((length - kept).unsqueeze(1) + positions).clamp(max=seq.size(1) - 1)
    shortened = torch.gather(seq, 1, index) * (positions < kept.unsqueeze(1))
    return Interaction({**interaction.interaction, seq_field: shortened, len_field: kept})


@user_errors_exit_2
def main():
    parser = argparse.ArgumentParser(prog="python -m bench.recency_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a MIND checkpoint written by RecBole's trainer")
    parser.add_argument("--last", default="5,10,20,50", help="comma-separated m: behaviours kept")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data_path", default=None,
                        help="folder holding the checkpoint's dataset, if not where it was trained")
    args = parser.parse_args()

    import torch
    from recbole.utils import get_trainer

    from recbole_mind.explain import load_explainer
    from recbole_mind.model.scoring import exclude_input_sequence

    torch.set_num_threads(args.threads)
    loaded = load_explainer(args.checkpoint, data_path=args.data_path)  # the model as trained
    model, config = loaded.model, loaded.config
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    predict = model.full_sort_predict

    for m in (int(v) for v in args.last.split(",")):
        def truncated(interaction, m=m):
            scores = predict(keep_last(interaction, model.ITEM_SEQ, model.ITEM_SEQ_LEN, m))
            return exclude_input_sequence(scores, interaction[model.ITEM_SEQ])  # the whole history

        model.full_sort_predict = truncated
        result = trainer.evaluate(loaded.test_data, load_best_model=False, show_progress=False)
        print(f"last {m:>3} behaviours: " + "  ".join(f"{k} {float(v):.4f}" for k, v in result.items()
                                                   if k in ("recall@10", "recall@50", "ndcg@10", "mrr@10")),
              flush=True)


if __name__ == "__main__":
    main()
