"""Where a full-sort evaluation's time goes: the model's scoring vs the rest of RecBole's evaluate.

Builds the dataset and model the way ``run_recbole_mind.py`` does (optionally loading a trained
checkpoint: the scores' values do not change the work, except MIND's number of active interests
when ``dynamic_interest`` is on), then times ``Trainer.evaluate`` on the test set ``--repeat``
times with one torch thread, and inside it the time spent in ``full_sort_predict``.

Usage (from the project root):
    python -m bench.profile_eval --dataset amazon-videogames data_path=../shared/data
    python -m bench.profile_eval --model SASRec --dataset amazon-videogames data_path=../shared/data
    python -m bench.profile_eval --checkpoint saved/compare/.../MIND-....pth --dataset ...
"""

import argparse
import time

from bench.mind_experiments import add_pipeline_arguments, build_pipeline
from bench.tool_errors import user_errors_exit_2


@user_errors_exit_2
def main():
    parser = argparse.ArgumentParser(prog="python -m bench.profile_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a RecBole checkpoint of the same model and dataset")
    parser.add_argument("--repeat", type=int, default=2)
    add_pipeline_arguments(parser)
    args = parser.parse_args()

    from recbole.utils import get_trainer

    from recbole_mind.checkpoint import load_checkpoint

    config, _, test_data, model = build_pipeline(args)
    if args.checkpoint:
        model.load_state_dict(load_checkpoint(args.checkpoint)["state_dict"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)

    spent = []
    predict = model.full_sort_predict

    def timed(interaction):
        started = time.perf_counter()
        scores = predict(interaction)
        spent.append(time.perf_counter() - started)
        return scores

    model.full_sort_predict = timed
    for run in range(args.repeat):
        spent.clear()
        started = time.perf_counter()
        result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        total = time.perf_counter() - started
        print(f"{args.model} on {args.dataset}, evaluate #{run + 1}: {total:.2f} s, of which "
              f"full_sort_predict {sum(spent):.2f} s over {len(spent)} batches of "
              f"{config['eval_batch_size']}; ndcg@10 {result['ndcg@10']}", flush=True)


if __name__ == "__main__":
    main()
