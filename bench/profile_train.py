"""Where a training epoch's time goes: RecBole's data loader vs the model's step, and the top ops.

Builds the dataset and model the way ``run_recbole_mind.py`` does, then times ``--batches``
training batches (loader, forward + loss, backward, optimiser step) with one torch thread and
prints torch.profiler's table of the most expensive ops.

Usage (from the project root):
    python -m bench.profile_train --dataset amazon-videogames data_path=../shared/data
    python -m bench.profile_train --model GRU4Rec --dataset ml-100k
"""

import argparse
import time

from bench.mind_experiments import add_pipeline_arguments, build_pipeline
from bench.tool_errors import user_errors_exit_2


@user_errors_exit_2
def main():
    parser = argparse.ArgumentParser(prog="python -m bench.profile_train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=10)
    add_pipeline_arguments(parser)
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    config, train_data, _, model = build_pipeline(args)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])

    loader_s, step_s, batches = 0.0, 0.0, iter(train_data)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.batches):
            started = time.perf_counter()
            batch = next(batches)
            loaded = time.perf_counter()
            optimiser.zero_grad()
            loss = model.calculate_loss(batch)
            loss.backward()
            optimiser.step()
            step_s += time.perf_counter() - loaded
            loader_s += loaded - started
    per_epoch = len(train_data)
    print(f"{args.model} on {args.dataset}: {per_epoch} batches of {config['train_batch_size']} per epoch; "
          f"per batch: loader {loader_s / args.batches:.3f} s, model step {step_s / args.batches:.3f} s "
          f"(profiler on); epoch estimate {per_epoch * (loader_s + step_s) / args.batches:.1f} s")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
