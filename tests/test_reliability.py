"""Bad input gets one clear line and exit code 2; NaN stops cleanly; resume; reproducibility;
MIND under RecBole's evaluation settings."""

import logging
import os
import re

import pytest
import torch

from recbole_mind import MIND
from recbole_mind.checkpoint import load_checkpoint
from recbole_mind.cli import main, parse_args
from recbole_mind.errors import UserError
from recbole_mind.train import run


def _args(cfg):
    return [f"--{k}={v}" for k, v in cfg.items()]


def _one_error_line(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_unknown_dataset(capsys, tmp_path):
    line = _one_error_line(capsys, ["--dataset", "no-such-data", f"--data_path={tmp_path}"])
    assert "unknown dataset 'no-such-data'" in line


def test_folder_without_inter_file(capsys, tmp_path):
    _write(str(tmp_path / "mine" / "mine.user"), "user_id:token\n1\n")
    line = _one_error_line(capsys, ["--dataset", "mine", f"--data_path={tmp_path}"])
    assert "has no mine.inter" in line


@pytest.mark.parametrize("header,row,expected", [
    ("user_id\titem_id\ttimestamp", "1\t2\t3", "is not 'name:type'"),
    ("user_id:token\titem_id:token\ttimestamp:float", "1\t2\tyesterday", "non-numeric value 'yesterday' on line 2"),
    ("user:token\titem_id:token", "1\t2", "no 'user_id' column"),
])
def test_malformed_inter_file(capsys, tmp_path, header, row, expected):
    _write(str(tmp_path / "bad" / "bad.inter"), f"{header}\n{row}\n")
    line = _one_error_line(capsys, ["--dataset", "bad", f"--data_path={tmp_path}"])
    assert expected in line


def test_config_file_missing_or_not_yaml(capsys, tmp_path):
    line = _one_error_line(capsys, ["--config_files", str(tmp_path / "nope.yaml")])
    assert "does not exist" in line
    bad = _write(str(tmp_path / "bad.yaml"), "epochs: [1, 2\nlearning_rate: : 3\n")
    assert "is not valid YAML" in _one_error_line(capsys, ["--config_files", bad])
    listing = _write(str(tmp_path / "list.yaml"), "- a\n- b\n")
    assert "not a mapping" in _one_error_line(capsys, ["--config_files", listing])


def test_unknown_model(capsys):
    assert "unknown model 'Nope'" in _one_error_line(capsys, ["-m", "Nope"])


@pytest.mark.parametrize("override,expected", [
    ("--interest_num=0", "interest_num must be >= 1"),
    ("--routing_iterations=0", "routing_iterations must be >= 1"),
    ("--routing_init=kmeans", "routing_init must be random or seeded"),
    ("--attention_power=0", "attention_power must be > 0"),
    ("--attention_power=-2", "attention_power must be > 0"),
    ("--embedding_size=0", "embedding_size must be >= 1"),
    ("--MAX_ITEM_LIST_LENGTH=0", "MAX_ITEM_LIST_LENGTH must be an integer >= 1"),
    ("--loss_type=XE", "loss_type must be one of CE, SSM, BPR"),
    ("--interest_num=four", "interest_num must be int"),
])
def test_bad_model_settings(capsys, tiny_config, override, expected):
    line = _one_error_line(capsys, ["--dataset", "tiny", *_args(tiny_config), override])
    assert expected in line


@pytest.mark.parametrize("overrides,expected", [
    (["--eval_protocol=multi_target", "--split_seed=abc"], "split_seed must be a whole number >= 0"),
    (["--eval_protocol=multi_target", "--split_seed=-1"], "split_seed must be a whole number >= 0"),
    (["--eval_protocol=multi_target", "--diversity_lambda=-1"], "diversity_lambda must be a number >= 0"),
    (["--split_seed=3"], "split_seed belongs to the multi-target protocol"),
    (["--diversity_lambda", "0.1"], "diversity_lambda belongs to the multi-target protocol"),
    (["--eval_protocol=multi_target", "--split_seeds", "1,2"], "--split_seeds repeats a --compare"),
])
def test_bad_protocol_settings(capsys, tiny_config, overrides, expected):
    line = _one_error_line(capsys, ["--dataset", "tiny", *_args(tiny_config), *overrides])
    assert expected in line


def test_protocol_keys_on_the_command_line_reach_the_config():
    # --split_seed is not cut to --split_seeds (argparse's abbreviations are off), and
    # --diversity_lambda of a training run is the protocol's key, not only retrieval's flag
    args, overrides = parse_args(["--split_seed=3", "--diversity_lambda", "0.1"])
    assert args.split_seeds is None and overrides == {"split_seed": "3", "diversity_lambda": 0.1}
    args, overrides = parse_args(["--retrieve", "--checkpoint", "m.pth", "--diversity_lambda", "0.1"])
    assert args.diversity_lambda == 0.1 and "diversity_lambda" not in overrides


def test_ssm_needs_negatives(capsys, tiny_config):
    line = _one_error_line(capsys, ["--dataset", "tiny", *_args(tiny_config), "--loss_type=SSM", "--num_negatives=0"])
    assert "num_negatives must be >= 1 with loss_type SSM" in line


@pytest.mark.parametrize("key", ["user_features", "item_features"])
def test_feature_the_dataset_lacks(capsys, tiny_config, key):
    line = _one_error_line(capsys, ["--dataset", "tiny", *_args(tiny_config), f"--{key}=['shoe_size']"])
    assert f"{key} names 'shoe_size'" in line


def test_checkpoint_missing_not_a_checkpoint_or_foreign(capsys, tiny_config, tmp_path):
    base = ["--dataset", "tiny", *_args(tiny_config)]
    assert "does not exist" in _one_error_line(capsys, base + ["--resume", str(tmp_path / "gone.pth")])
    junk = _write(str(tmp_path / "junk.pth"), "not a checkpoint")
    assert "is not a RecBole checkpoint" in _one_error_line(capsys, base + ["--resume", junk])
    other = run("GRU4Rec", "tiny", config_dict={**tiny_config, "hidden_size": 8})["saved_model_file"]
    assert "is a GRU4Rec model, not MIND" in _one_error_line(capsys, base + ["--resume", other])
    mind = run("MIND", "tiny", config_dict=tiny_config)["saved_model_file"]
    from conftest import write_tiny_dataset

    write_tiny_dataset(str(tmp_path / "bigger"), name="tiny", n_items=60)
    line = _one_error_line(capsys, ["--dataset", "tiny", *_args({**tiny_config, "data_path": str(tmp_path / "bigger")}),
                                    "--resume", mind])
    assert "was trained on 41 items" in line and "this dataset has 61" in line


def test_single_interaction_users_and_sequences_shorter_than_k(tmp_path, tiny_config):
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    t = 0
    for u in range(1, 41):
        for k in range([1, 2, 3, 7][u % 4]):
            rows.append(f"{u}\t{(u * 7 + k) % 30 + 1}\t{t}")
            t += 1
    _write(str(tmp_path / "short" / "short.inter"), "\n".join(rows) + "\n")
    result = run("MIND", "short", config_dict={**tiny_config, "data_path": str(tmp_path), "interest_num": 8})
    assert 0 <= result["test_result"]["ndcg@10"] <= 1


class ExplodingMIND(MIND):
    """MIND whose loss turns to NaN in its second epoch (one batch per epoch)."""

    calls = 0

    def calculate_loss(self, interaction):
        ExplodingMIND.calls += 1
        loss = super().calculate_loss(interaction)
        return loss * float("nan") if ExplodingMIND.calls > 1 else loss


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tiny_config):
    ExplodingMIND.calls = 0
    with pytest.raises(UserError, match=r"training loss became nan in epoch 2: lower learning_rate") as err:
        run(ExplodingMIND, "tiny", config_dict={**tiny_config, "epochs": 3, "train_batch_size": 100000})
    kept = str(err.value).rsplit("kept at ", 1)[1]
    checkpoint = load_checkpoint(kept)
    assert checkpoint["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
    assert not os.path.exists(kept + ".partial")


def test_interrupted_run_resumes_from_its_checkpoint(tiny_config):
    first = run("MIND", "tiny", config_dict={**tiny_config, "epochs": 2})
    saved_epoch = load_checkpoint(first["saved_model_file"])["epoch"]  # RecBole saves the best epoch
    resumed = run("MIND", "tiny", config_dict={**tiny_config, "epochs": 4}, resume_from=first["saved_model_file"])
    assert resumed["epochs_run"] == 4 - (saved_epoch + 1)  # only the epochs after the checkpoint
    # the best epoch counts from the run's start, not from the resumed epoch: RecBole stores
    # the 0-based best epoch in each best checkpoint
    best_file = resumed["saved_model_file"]
    best = load_checkpoint(best_file)["epoch"] if os.path.isfile(best_file) else saved_epoch
    assert resumed["best_epoch"] == best + 1


def test_resumed_run_that_never_improves_reports_the_checkpoints_metrics(tiny_config):
    """RecBole's checkpoint keeps the best score but not its metrics: a resumed run in which no
    epoch beats it must report the checkpoint's validation metrics, not
    crash on RecBole's None."""
    first = run("MIND", "tiny", config_dict={**tiny_config, "epochs": 2})

    def never_better(trainer, train_data):
        # every validation after the resume scores below the checkpoint (a config's
        # learning_rate 0 would not do: resume_checkpoint restores the optimiser's saved one,
        # and RecBole counts a tie as an improvement)
        validate = trainer._valid_epoch

        def worse(*args, **kwargs):
            score, result = validate(*args, **kwargs)
            return score - 1.0, result

        trainer._valid_epoch = worse

    resumed = run("MIND", "tiny", config_dict={**tiny_config, "epochs": 4},
                  resume_from=first["saved_model_file"], trainer_hook=never_better)
    assert resumed["epochs_run"] == 2
    assert resumed["best_valid_result"] == pytest.approx(first["best_valid_result"])
    assert resumed["test_result"] == pytest.approx(first["test_result"])


def test_resuming_with_other_settings_says_the_optimiser_keeps_its_learning_rate(tiny_config, caplog):
    """RecBole's resume_checkpoint restores the optimiser, whose learning rate then wins over the
    run's: a resumed run with another learning_rate (or any other setting) logs one warning
    naming each change and what happens to it; a longer epoch budget alone logs none."""
    cfg = {**tiny_config, "state": "WARNING", "learning_rate": 0.01}
    first = run("MIND", "tiny", config_dict=cfg)
    learning_rates = []

    def record(trainer, train_data):
        learning_rates.append(trainer.optimizer.param_groups[0]["lr"])

    def resume_warnings():
        return [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.getMessage().startswith("resuming")]

    with caplog.at_level(logging.WARNING):
        # (a resumed run saves its best checkpoints over the file it resumed, with its own config)
        run("MIND", "tiny", config_dict={**cfg, "epochs": 2}, resume_from=first["saved_model_file"])
        assert resume_warnings() == []
        run("MIND", "tiny", config_dict={**cfg, "epochs": 3, "learning_rate": 0.02, "temperature": 0.2},
            resume_from=first["saved_model_file"], trainer_hook=record)
        (warning,) = resume_warnings()
    assert "learning_rate 0.02 (checkpoint: 0.01)" in warning
    assert "temperature 0.2 (checkpoint: 0.1)" in warning
    assert "learning_rate stays the checkpoint's" in warning
    assert learning_rates == [0.01]  # what the warning says


def test_same_seed_same_metrics(tiny_config):
    cfg = {**tiny_config, "epochs": 2, "reproducibility": True}
    first, second = run("MIND", "tiny", config_dict=cfg), run("MIND", "tiny", config_dict=cfg)
    assert first["best_valid_result"] == second["best_valid_result"]
    assert first["test_result"] == second["test_result"]


# Every value RecBole's own sequential-model tests exercise appears at least once, and each
# pair of (mode, split) and (loss, features) is covered.
_BPR = {"distribution": "uniform", "sample_num": 1}
_FEATURES = {"user_features": ["age", "gender"], "item_features": ["genre", "year"]}
SETTINGS = [
    ("full", "LS", "CE", False, 10),
    ("full", "RS", "SSM", True, 200),
    ("uni100", "LS", "BPR", True, 1),
    ("uni100", "RS", "CE", True, 10),
    ("pop100", "LS", "SSM", False, 10),
    ("pop100", "RS", "BPR", False, 200),
    ("full", "LS", "BPR", True, 10),
    ("full", "LS", "SSM", True, 1),
    ("full", "RS", "CE", True, 1),
]


@pytest.mark.parametrize("mode,split,loss,features,max_len", SETTINGS)
def test_recbole_evaluation_settings(tiny_config, mode, split, loss, features, max_len):
    cfg = {
        **tiny_config,
        "eval_args": {"split": {"LS": "valid_and_test"} if split == "LS" else {"RS": [0.8, 0.1, 0.1]},
                      "order": "TO", "group_by": "user", "mode": mode},
        "loss_type": loss, "num_negatives": 8, "MAX_ITEM_LIST_LENGTH": max_len,
        "train_neg_sample_args": _BPR if loss == "BPR" else None,
        **(_FEATURES if features else {}),
    }
    result = run("MIND", "tiny", config_dict=cfg)
    assert all(0 <= v <= 1 for v in result["test_result"].values())


def test_a_checkpoint_of_another_version_is_one_clear_line(capsys, tiny_config, tmp_path):
    from recbole_mind.trainer import VERSION_KEY
    from recbole_mind.version import __version__

    saved = run("MIND", "tiny", config_dict=tiny_config)["saved_model_file"]
    checkpoint = torch.load(saved, weights_only=False)
    assert checkpoint[VERSION_KEY] == __version__
    assert not os.path.exists(saved + ".partial")  # written beside, then renamed over
    old = str(tmp_path / "old.pth")
    for version, said in (("0.0.1", "saved by recbole-mind 0.0.1"), (None, "it names no version")):
        checkpoint[VERSION_KEY] = version
        torch.save(checkpoint, old)
        for argv in (["--retrieve", "--checkpoint", old, f"--data_path={tiny_config['data_path']}"],
                     ["--explain", "--checkpoint", old],
                     ["--dataset", "tiny", *_args(tiny_config), "--resume", old]):
            line = _one_error_line(capsys, argv)
            assert said in line and f"this is recbole-mind {__version__}" in line, line


@pytest.mark.parametrize("rows, expected", [
    ([], "has a header but no interactions"),
    ([(u, u, u) for u in range(1, 30)], "no user has more than 1 interaction, too few"),
    ([(u, (u + k) % 20 + 1, 10 * u + k) for u in range(1, 30) for k in range(3)], "no user has more than 3 interactions"),
    ([(1, 2, 1), (1, "", 2)] + [(2, k, k) for k in range(1, 6)], "line 3 has an empty item_id"),
    ([(1, 2, 1), ("", 3, 2)] + [(2, k, k) for k in range(1, 6)], "line 3 has an empty user_id"),
])
def test_degenerate_interactions_are_one_line_before_logging(capsys, tmp_path, rows, expected):
    lines = ["user_id:token\titem_id:token\ttimestamp:float"] + ["\t".join(map(str, row)) for row in rows]
    _write(str(tmp_path / "d" / "deg" / "deg.inter"), "\n".join(lines) + "\n")
    os.chdir(tmp_path)
    line = _one_error_line(capsys, ["--dataset", "deg", f"--data_path={tmp_path / 'd'}", "--topk=[5]",
                                    "--valid_metric=NDCG@5", "--epochs=1"])
    assert expected in line
    assert not (tmp_path / "log").exists() and not (tmp_path / "saved").exists()  # nothing written


def test_topk_larger_than_the_catalogue_is_one_line(capsys, tiny_config):
    line = _one_error_line(capsys, ["--dataset", "tiny", *_args({**tiny_config, "topk": "[10,100]"})])
    assert "topk [10, 100] asks for 100 items" in line and "has 40" in line


def test_every_log_line_counts_epochs_from_one(tiny_config, caplog):
    """RecBole's own lines count from 0; the plugin's summary from 1: the log says it one way."""
    caplog.set_level(logging.INFO)
    result = run("MIND", "tiny", config_dict={**tiny_config, "epochs": 8, "stopping_step": 1, "state": "INFO"})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "epoch 0 " not in text and "epoch 1 training" in text and "epoch 1 evaluating" in text
    trained = [int(n) for n in re.findall(r"epoch (\d+)\S* training", text)]
    assert trained == list(range(1, result["epochs_run"] + 1))
    best = re.search(r"best eval result in epoch (\d+)", text)
    if best:  # logged when training stops early
        assert int(best.group(1)) == result["best_epoch"]
