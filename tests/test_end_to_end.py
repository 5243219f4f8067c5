"""MIND through RecBole's own trainer, best-checkpoint reload included, and the CLI."""

import torch
from recbole.utils import get_trainer

from recbole_mind import MIND
from recbole_mind.cli import main
from recbole_mind.quick_start import build_config, prepare_data, run


def test_run_trains_evaluates_and_reloads_the_best_checkpoint(tiny_config):
    result = run("MIND", "tiny", config_dict={**tiny_config, "epochs": 3})
    assert result["epochs_run"] == 3 and 1 <= result["best_epoch"] <= 3
    assert set(result["test_result"]) == {f"{m}@{k}" for m in ("recall", "mrr", "ndcg", "hit") for k in (5, 10)}
    assert 0 <= result["test_result"]["ndcg@10"] <= 1

    # A fresh model loaded from the saved best checkpoint reproduces the reported test figures.
    config = build_config("MIND", "tiny", config_dict=tiny_config)
    _, train, _, test = prepare_data(config)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, MIND(config, train._dataset))
    again = trainer.evaluate(test, load_best_model=True, model_file=result["saved_model_file"])
    assert {k: float(v) for k, v in again.items()} == result["test_result"]
    assert not torch.is_anomaly_enabled()


def test_recbole_builtin_runs_through_the_same_path(tiny_config):
    result = run("GRU4Rec", "tiny", config_dict={**tiny_config, "hidden_size": 16})
    assert result["model"] == "GRU4Rec" and "ndcg@10" in result["test_result"]


def _cli_args(cfg):
    return [f"--{k}={v}" for k, v in cfg.items()]


def test_cli_one_epoch_on_tiny_data(tiny_config, capsys):
    assert main(["--dataset", "tiny", *_cli_args(tiny_config)]) == 0
    out = capsys.readouterr().out
    assert "MIND on tiny: 1 epochs" in out and "test:" in out and "ndcg@10" in out


def test_cli_unknown_model_is_one_line(capsys):
    assert main(["--model", "NoSuchModel"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown model 'NoSuchModel': use MIND or a RecBole model name such as GRU4Rec, SASRec, SINE"]
