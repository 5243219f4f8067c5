"""Shared fixtures: a tiny RecBole dataset written to a temporary folder, and small configs."""

import os

import numpy as np
import pytest

import recbole_mind  # noqa: F401  (applies the stack fixes before RecBole is used)
import torch

torch.set_num_threads(1)  # tiny tensors: threads only contend with the other test processes

TINY = "tiny"
GENRES = ["action", "comedy", "drama", "horror", "scifi", "romance"]


def write_tiny_dataset(root, name=TINY, n_users=60, n_items=40, seed=0, min_len=3, max_len=24):
    """Atomic files of a small dataset with cluster structure: items 1..n/2 and n/2+1..n form
    two groups; each user draws mostly from a favourite group, in time order."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    half = n_items // 2
    with open(os.path.join(folder, f"{name}.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        t = 0
        for u in range(1, n_users + 1):
            length = int(rng.integers(min_len, max_len + 1))
            favourite = u % 2
            for _ in range(length):
                group = favourite if rng.random() < 0.8 else 1 - favourite
                item = int(rng.integers(1, half + 1)) + group * half
                f.write(f"{u}\t{item}\t{t}\n")
                t += 1
    with open(os.path.join(folder, f"{name}.user"), "w") as f:
        f.write("user_id:token\tage:token\tgender:token\n")
        for u in range(1, n_users + 1):
            f.write(f"{u}\t{10 * (1 + u % 5)}\t{'MF'[u % 2]}\n")
    with open(os.path.join(folder, f"{name}.item"), "w") as f:
        f.write("item_id:token\tyear:token\tgenre:token_seq\n")
        for i in range(1, n_items + 1):
            genres = " ".join(GENRES[(i + k) % len(GENRES)] for k in range(i % 3))  # some empty
            f.write(f"{i}\t{1990 + i % 7}\t{genres}\n")
    return root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return write_tiny_dataset(str(tmp_path_factory.mktemp("data")))


@pytest.fixture
def tiny_config(tiny_root, tmp_path):
    """config_dict for a fast run on the tiny dataset; tests update it as they need."""
    return {
        "data_path": tiny_root,
        "checkpoint_dir": str(tmp_path / "saved"),
        "epochs": 1,
        "train_batch_size": 64,
        "eval_batch_size": 64,
        "MAX_ITEM_LIST_LENGTH": 10,
        "embedding_size": 16,
        "show_progress": False,
        "state": "ERROR",
        "seed": 7,
        "topk": [5, 10],
    }


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    # RecBole writes ./log and ./log_tensorboard: keep them out of the checkout.
    monkeypatch.chdir(tmp_path)
