"""Training on several processes with RecBole's DDP path: the launch, and what a rank needs.

RecBole's keys name a distributed run: ``nproc`` (processes on this machine), ``world_size``
(processes on all machines), ``ip`` and ``port`` (rank 0's address), ``offset`` (the global rank
of this machine's first process; RecBole's ``--group_offset``), ``local_rank`` (set per process).
:func:`launch` spawns ``nproc`` processes that each run the same function with their
``local_rank``; under torchrun the launcher's environment gives the same keys
(:func:`torchrun_settings`) and the process is already one rank. The device-aware process group,
model wrapping and exact evaluation are fixes of RecBole's path in compat.py.
"""

import logging
import os
import resource
import socket
import sys
import traceback

import numpy as np
import torch.distributed as dist

from recbole_mind.errors import UserError

DEFAULT_IP = "127.0.0.1"
KEYS = ("nproc", "world_size", "ip", "port", "offset")
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class Signal(Exception):
    """Control flow, not a failure: raised in a rank, re-raised as itself by :func:`launch` (e.g.
    a comparison's pause at its time budget). Every rank must raise it at the same point."""


def torchrun_settings(environ=os.environ):
    """RecBole's keys from torchrun's environment (None when not started by torchrun)."""
    if not all(name in environ for name in TORCHRUN_VARIABLES):
        return None
    rank, local_rank = int(environ["RANK"]), int(environ["LOCAL_RANK"])
    return {"local_rank": local_rank, "offset": rank - local_rank, "world_size": int(environ["WORLD_SIZE"]),
            "nproc": int(environ["LOCAL_WORLD_SIZE"]), "ip": environ["MASTER_ADDR"],
            "port": int(environ["MASTER_PORT"])}


def wants_launch(config_dict):
    """Whether a run with these settings must start its processes (several, and none started yet)."""
    config_dict = config_dict or {}
    return int(config_dict.get("nproc") or 1) > 1 and "local_rank" not in config_dict


def free_port(ip=DEFAULT_IP):
    with socket.socket() as probe:
        probe.bind((ip, 0))
        return probe.getsockname()[1]


def launch_settings(config_dict):
    """``config_dict`` completed for :func:`launch`: world_size defaults to nproc, ip to the
    loopback, port to a free one there, offset to 0 (UserError for inconsistent values)."""
    settings = dict(config_dict)
    nproc = int(settings["nproc"])
    settings["nproc"] = nproc
    settings["world_size"] = int(settings.get("world_size") or -1)
    if settings["world_size"] <= 0:
        settings["world_size"] = nproc
    settings["offset"] = int(settings.get("offset") or 0)
    settings["ip"] = settings.get("ip") or DEFAULT_IP
    if settings["offset"] < 0 or settings["offset"] + nproc > settings["world_size"]:
        raise UserError(f"--group_offset {settings['offset']} with --nproc {nproc} exceeds --world_size "
                        f"{settings['world_size']}: a machine's ranks are offset .. offset + nproc - 1")
    if not settings.get("port"):
        if settings["world_size"] != nproc:
            raise UserError("--port is needed when the run spans several machines (--world_size > --nproc): "
                            "give every machine the same --ip and --port of the machine with --group_offset 0")
        settings["port"] = free_port(settings["ip"])
    return settings


def launch(function, kwargs, config_dict):
    """Run ``function(**kwargs, config_dict=...)`` in ``nproc`` spawned processes, one per local
    rank; returns what global rank 0 returned.

    A rank that raises or dies ends every rank of this machine (torch's spawn stops the others),
    and the run ends with one UserError naming the rank and the cause.
    """
    import torch
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException, ProcessExitedException

    settings = launch_settings(config_dict)
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)  # its "Terminating process" lines
    queue = mp.get_context("spawn").SimpleQueue()
    try:  # each rank takes this process's torch thread count
        mp.start_processes(_rank_main, args=(function, kwargs, settings, queue, torch.get_num_threads()),
                           nprocs=settings["nproc"],
                           join=True, start_method="spawn")
    except ProcessException as e:
        messages = _drain(queue)
        signals = [m[2] for m in messages if m[0] == "signal"]
        if signals:
            raise signals[0] from None
        rank = e.error_index + settings["offset"]
        cause = next((m[2] for m in messages if m[0] == "error" and m[1] == rank), None)
        if cause is None and isinstance(e, ProcessExitedException) and e.signal_name:
            cause = f"the process was killed ({e.signal_name})"
        raise UserError(f"rank {rank} of {settings['world_size']} failed: {cause or e}; every rank on this "
                        "machine was stopped and nothing more was written") from None
    results = [m[1] for m in _drain(queue) if m[0] == "result"]
    return results[0] if results else None


def _drain(queue):
    messages = []
    while not queue.empty():
        messages.append(queue.get())
    return messages


def _rank_main(local_rank, function, kwargs, settings, queue, threads):
    import torch

    torch.set_num_threads(threads)
    rank = local_rank + settings["offset"]
    try:
        result = function(**kwargs, config_dict={**settings, "local_rank": local_rank})
    except Signal as e:
        queue.put(("signal", rank, e))
        sys.exit(2)
    except UserError as e:
        queue.put(("error", rank, str(e)))
        sys.exit(2)
    except Exception as e:  # noqa: BLE001  (the parent reports it as this rank's cause, in one line)
        where = traceback.extract_tb(e.__traceback__)[-1]
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        queue.put(("error", rank, f"{type(e).__name__}: {message} (at {os.path.basename(where.filename)}:{where.lineno})"))
        sys.exit(1)
    if rank == 0:
        queue.put(("result", result))


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def global_rank():
    return dist.get_rank() if is_distributed() else 0


def broadcast(value):
    """Global rank 0's ``value`` on every rank."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier():
    if is_distributed():
        dist.barrier()


def gather(value):
    """[every rank's ``value``] in rank order."""
    if not is_distributed():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def peak_rss_mb():
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)


def end():
    """Leave the process group (after the last collective of a run)."""
    if is_distributed():
        # every rank past the last collective before any tears the group down: a gloo rank whose
        # peer closes its connections mid-exchange aborts ("terminate called without an active
        # exception", SIGABRT), seen once in a full test run
        dist.barrier()
        dist.destroy_process_group()


class Unsharded:
    """Every batch of a RecBole loader whatever its distributed sampler, for figures computed
    outside the Trainer (each rank then sees all rows); attributes are the loader's."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self):
        return -(-self.loader.sample_size // self.loader.step)

    def __iter__(self):
        n, step = self.loader.sample_size, self.loader.step
        for start in range(0, n, step):
            yield self.loader.collate_fn(np.arange(start, min(start + step, n)))

