"""Where a training step's time goes, on one process and on several (MIND, RecBole's DDP path).

Wraps MIND.calculate_loss (the loss forward), Tensor.backward (with DDP, the gradient all-reduce
runs inside it), Adam.step, and RecBole's two per-step DDP additions (the dummy forward through
the wrapper, the zero loss over every parameter), sums their wall time per rank over
``--epochs`` training epochs without validation, and prints one line per rank and the epoch times.
``--comm_hook`` replaces DDP's gradient all-reduce, to tell its parts apart: ``fp16`` (torch's
fp16 compression hook; gloo has no bf16 one), ``sync_only`` (the ranks meet at every bucket with a
one-number all-reduce and keep their own gradients: the cost of waiting for each other without the
bytes), ``local`` (no communication at all: what the step costs without DDP's synchronisation).
Only ``allreduce`` (the default) trains the model RecBole trains; the others time it.

Usage (from the project root, on an otherwise idle machine):
    python -m bench.ddp_step_times --nproc 1 --dataset amazon-videogames --data_path ../shared/data
    python -m bench.ddp_step_times --nproc 2 --dataset amazon-videogames --data_path ../shared/data
"""

import argparse
import collections
import json
import time


def comm_hook(name):
    """A DDP communication hook by name (None: DDP's own all-reduce)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    def local(state, bucket):
        future = torch.futures.Future()
        future.set_result(bucket.buffer())
        return future

    def sync_only(state, bucket):
        work = dist.all_reduce(torch.zeros(1), async_op=True)
        return work.get_future().then(lambda _: bucket.buffer())

    return {"allreduce": None, "fp16": default_hooks.fp16_compress_hook, "local": local,
            "sync_only": sync_only}[name]


def timed_run(hook="allreduce", **kwargs):
    """train.run with the step's parts timed; prints this rank's sums."""
    import torch
    from recbole.trainer.trainer import AbstractTrainer

    from recbole_mind import distributed
    from recbole_mind.model import MIND
    from recbole_mind.train import run

    seconds, calls = collections.defaultdict(float), collections.Counter()

    def timed(owner, name, key):
        original = getattr(owner, name)

        def wrapper(*args, **kw):
            started = time.perf_counter()
            try:
                return original(*args, **kw)
            finally:
                seconds[key] += time.perf_counter() - started
                calls[key] += 1
        setattr(owner, name, wrapper)

    timed(MIND, "calculate_loss", "loss forward")
    timed(torch.Tensor, "backward", "backward (with the all-reduce)")
    timed(torch.optim.Adam, "step", "Adam step")
    timed(AbstractTrainer, "set_reduce_hook", "DDP dummy forward")
    timed(AbstractTrainer, "sync_grad_loss", "DDP zero loss")
    replacement = comm_hook(hook)
    if replacement is not None:
        init = AbstractTrainer.__init__

        def with_hook(self, config, model):
            init(self, config, model)
            if hasattr(self, "distributed_model"):
                self.distributed_model.register_comm_hook(None, replacement)
        AbstractTrainer.__init__ = with_hook
    rank = None
    original_end = distributed.end

    def end():  # read the rank before the group is left
        nonlocal rank
        rank = distributed.global_rank()
        original_end()
    distributed.end = end
    result = run(**kwargs)
    times = {k: {"s": round(v, 2), "calls": calls[k]} for k, v in seconds.items()}
    print(json.dumps({"rank": rank or 0, "seconds": times}), flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train_batch_size", type=int, default=None, help="RecBole's (over all processes)")
    parser.add_argument("--comm_hook", default="allreduce", choices=["allreduce", "fp16", "sync_only", "local"])
    args = parser.parse_args()

    from recbole_mind import distributed
    from recbole_mind.cli import set_threads

    set_threads(1)
    config = {"epochs": args.epochs, "eval_step": 0, "state": "WARNING", "show_progress": False}
    if args.data_path:
        config["data_path"] = args.data_path
    if args.train_batch_size:
        config["train_batch_size"] = args.train_batch_size
    kwargs = {"model": "MIND", "dataset": args.dataset, "saved": False, "hook": args.comm_hook}
    if args.nproc > 1:
        result = distributed.launch(timed_run, kwargs, {**config, "nproc": args.nproc})
    else:
        result = timed_run(**kwargs, config_dict=config)
    print("epoch seconds (global rank 0):", result["epoch_seconds"])


if __name__ == "__main__":
    main()
