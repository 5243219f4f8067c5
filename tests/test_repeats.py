"""exclude_history: auto — the repeat share of the training rows and the choice it makes."""

import os

import pytest
from recbole.utils import init_seed

from recbole_mind.config import build_config
from recbole_mind.data import load_data
from recbole_mind.errors import UserError
from recbole_mind.model import MIND
from recbole_mind.repeats import REPEAT_SHARE_THRESHOLD, repeat_share, resolve_exclude_history
from recbole_mind.train import run


def write_no_repeat_dataset(root, name="fresh", n_users=40, n_items=60, length=12):
    """Every user consumes distinct items (no repeats), each from a shifted window of the catalogue."""
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u in range(1, n_users + 1):
            for t in range(length):
                f.write(f"{u}\t{1 + (u + 3 * t) % n_items}\t{t}\n")
    return root


def train_dataset(tiny_config, dataset="tiny", **overrides):
    config = build_config("MIND", dataset, config_dict=tiny_config | overrides)
    init_seed(config["seed"], True)
    _, train_data, _, _ = load_data(config)
    return config, train_data._dataset


def test_repeat_share_equals_a_plain_loop(tiny_config):
    _, dataset = train_dataset(tiny_config)
    sequences = dataset.inter_feat[dataset.iid_field + "_list"].tolist()
    lengths = dataset.inter_feat[dataset.config["ITEM_LIST_LENGTH_FIELD"]].tolist()
    labels = dataset.inter_feat[dataset.iid_field].tolist()
    expected = sum(label in seq[:n] for seq, n, label in zip(sequences, lengths, labels)) / len(labels)
    assert 0 < expected < 1  # the tiny dataset draws with replacement: some rows repeat
    assert repeat_share(dataset) == pytest.approx(expected)
    assert repeat_share(dataset, chunk=7) == pytest.approx(expected)  # chunking changes nothing


def test_auto_keeps_the_filter_where_nothing_repeats_and_drops_it_where_much_does(tiny_config, tmp_path):
    _, repeating = train_dataset(tiny_config)
    assert repeat_share(repeating) > REPEAT_SHARE_THRESHOLD
    assert resolve_exclude_history("auto", repeating).on is False
    assert resolve_exclude_history(True, repeating).on is True  # True and False still force it

    fresh_config = tiny_config | {"data_path": write_no_repeat_dataset(str(tmp_path / "fresh_data"))}
    config, fresh = train_dataset(fresh_config, dataset="fresh")
    assert repeat_share(fresh) == 0.0
    assert resolve_exclude_history("auto", fresh).on is True
    assert resolve_exclude_history(False, fresh).on is False
    assert MIND(config, fresh).exclude_history is True  # the default is auto


def test_a_run_logs_and_records_the_measured_share_and_the_choice(tiny_config, caplog):
    caplog.set_level("INFO")
    result = run("MIND", "tiny", config_dict=tiny_config | {"state": "INFO"}, saved=False)
    choice = result["exclude_history"]
    assert choice["setting"] == "auto" and choice["on"] is False
    assert choice["repeat_share"] > REPEAT_SHARE_THRESHOLD and choice["threshold"] == REPEAT_SHARE_THRESHOLD
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("exclude_history")]
    assert len(lines) == 1 and "exclude_history off" in lines[0] and "auto" in lines[0]


def test_a_bad_setting_is_one_clear_message(tiny_config):
    with pytest.raises(UserError, match="exclude_history must be auto, True or False, got 'sometimes'"):
        build_config("MIND", "tiny", config_dict=tiny_config | {"exclude_history": "sometimes"})
