"""bench.paired_users: the paired bootstrap against a plain loop and known cases, and per-user
recalls whose means are the runs' own test figures."""

import numpy as np
import pytest

from bench.paired_users import paired_bootstrap, per_user_recalls, table
from recbole_mind.train import run

PROTOCOL = {"eval_protocol": "multi_target", "topk": [5, 10], "valid_metric": "Recall@10", "epochs": 1}


def loop_bootstrap(a, b, groups, draws, seed):
    """The same resamples drawn as paired_bootstrap draws them, the means summed row by row."""
    rng = np.random.default_rng(seed)
    diff = [x - y for x, y in zip(a, b)]
    members = {g: [d for d, h in zip(diff, groups) if h == g] for g in sorted(set(groups))}
    picks = {g: rng.integers(0, len(rows), size=(draws, len(rows))) for g, rows in members.items()}
    means = []
    for draw in range(draws):
        total = 0.0
        for g, rows in members.items():
            for i in picks[g][draw]:
                total += rows[i]
        means.append(total / len(diff))
    means.sort()
    return sum(diff) / len(diff), np.percentile(means, 2.5), np.percentile(means, 97.5)


def test_the_bootstrap_equals_a_plain_loop():
    rng = np.random.default_rng(3)
    a, b = rng.random(23), rng.random(23)
    groups = ["s1"] * 10 + ["s2"] * 13
    assert paired_bootstrap(a, b, groups, draws=200, seed=5) == pytest.approx(loop_bootstrap(a, b, groups, 200, 5))


def test_known_cases():
    a = np.linspace(0, 1, 40)
    groups = ["s1"] * 20 + ["s2"] * 20
    assert paired_bootstrap(a, a, groups, draws=100) == (0.0, 0.0, 0.0)
    assert paired_bootstrap(a + 0.25, a, groups, draws=100) == pytest.approx((0.25, 0.25, 0.25))
    # many users, differences N(0.1, 1): the interval is about 0.1 +- 1.96 / sqrt(n)
    diff = np.random.default_rng(0).normal(0.1, 1.0, 4000)
    mean, low, high = paired_bootstrap(diff, np.zeros_like(diff), ["s"] * 4000, draws=2000)
    assert low < 0.1 < high and (high - low) / 2 == pytest.approx(1.96 / np.sqrt(4000), rel=0.1)


def trained(tiny_config, tmp_path, name, **overrides):
    """A one-epoch multi-target run's checkpoint, in a folder of its own (RecBole names
    checkpoints by the second: two runs in one folder can share a name)."""
    settings = tiny_config | PROTOCOL | {"checkpoint_dir": str(tmp_path / name)} | overrides
    return run("MIND", "tiny", config_dict=settings)


def test_per_user_recalls_average_to_each_runs_test_figure(tiny_config, tmp_path):
    four = trained(tiny_config, tmp_path, "k4")
    one = trained(tiny_config, tmp_path, "k1", interest_num=1)
    recalls, groups = per_user_recalls([("K4", four["saved_model_file"]), ("K1", one["saved_model_file"])], n=10)
    assert recalls["K4"].mean() == pytest.approx(four["test_result"]["recall@10"], abs=1e-4)
    assert recalls["K1"].mean() == pytest.approx(one["test_result"]["recall@10"], abs=1e-4)
    assert four["saved_model_file"] != one["saved_model_file"]
    assert len(set(groups)) == 1 and len(groups) == len(recalls["K1"])
    text = table(recalls, groups, n=10, draws=100)
    assert f"| K4 | {four['test_result']['recall@10']:.4f} |" in text and "| K4 - K1 |" in text


def test_every_label_on_every_split(tiny_config, tmp_path):
    from recbole_mind.errors import UserError

    first = trained(tiny_config, tmp_path, "split1", split_seed=1)["saved_model_file"]
    second = trained(tiny_config, tmp_path, "split2", split_seed=2)["saved_model_file"]
    with pytest.raises(UserError, match="split 2 of tiny has no checkpoint for K1"):
        per_user_recalls([("K4", first), ("K1", first), ("K4", second)], n=10)
    with pytest.raises(UserError, match="K4 is given twice for split 1"):
        per_user_recalls([("K4", first), ("K4", first), ("K1", first)], n=10)
