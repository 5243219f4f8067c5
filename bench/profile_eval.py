"""Where a full-sort evaluation's time goes: the model's scoring vs the rest of RecBole's evaluate.

Builds the dataset and model the way ``run_recbole_mind.py`` does (optionally loading a trained
checkpoint: the scores' values do not change the work, except MIND's number of active interests
when ``dynamic_interest`` is on), then times ``Trainer.evaluate`` on the test set ``--repeat``
times with one torch thread, and inside it the time spent in ``full_sort_predict``.

Usage (from the project root):
    python bench/profile_eval.py --dataset amazon-videogames data_path=../shared/data
    python bench/profile_eval.py --model SASRec --dataset amazon-videogames data_path=../shared/data
    python bench/profile_eval.py --checkpoint saved/compare/.../MIND-....pth --dataset ...
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mind_experiments import parse_overrides  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="MIND")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--checkpoint", help="a RecBole checkpoint of the same model and dataset")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()

    import torch
    from recbole.trainer import Trainer
    from recbole.utils import get_trainer, init_seed

    from recbole_mind.quick_start import build_config, prepare_data, resolve_model

    torch.set_num_threads(args.threads)
    config = build_config(args.model, args.dataset, config_dict=parse_overrides(args.overrides))
    init_seed(config["seed"], config["reproducibility"])
    _, train_data, _, test_data = prepare_data(config)
    model = resolve_model(args.model)(config, train_data._dataset)
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=False)["state_dict"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    assert isinstance(trainer, Trainer)

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
