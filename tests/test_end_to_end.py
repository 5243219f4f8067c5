"""MIND through RecBole's own trainer, best-checkpoint reload included, and the CLI."""

import torch
from recbole.utils import get_trainer

from recbole_mind import MIND
from recbole_mind.cli import main
from recbole_mind.config import build_config
from recbole_mind.data import prepare_data
from recbole_mind.train import run


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


def test_history_excluded_masks_the_input_sequence_of_any_sequential_model(tiny_config):
    """train.history_excluded: the input sequence's items at -inf, the rest unchanged,
    and the model's own method back afterwards."""
    from recbole.data.interaction import Interaction
    from recbole.model.sequential_recommender import GRU4Rec
    from recbole.utils import init_seed

    from recbole_mind.config import build_config
    from recbole_mind.data import prepare_data
    from recbole_mind.train import history_excluded

    config = build_config("GRU4Rec", "tiny", config_dict=tiny_config)
    init_seed(config["seed"], True)
    _, train_data, _, _ = prepare_data(config)
    model = GRU4Rec(config, train_data._dataset).eval()
    item_seq = torch.tensor([[3, 5, 0, 0], [7, 0, 0, 0]])
    batch = Interaction({model.ITEM_SEQ: item_seq, model.ITEM_SEQ_LEN: torch.tensor([2, 1])})
    with torch.no_grad():
        plain = model.full_sort_predict(batch)
        with history_excluded(model):
            masked = model.full_sort_predict(batch)
        again = model.full_sort_predict(batch)
    torch.testing.assert_close(again, plain)
    for row, seen in enumerate(({0, 3, 5}, {0, 7})):
        for item in range(model.n_items):
            assert masked[row, item] == (float("-inf") if item in seen else plain[row, item])


def test_the_paper_model_runs_from_its_one_file(tiny_config, capsys):
    """MIND-paper.yaml on top of the defaults gives the paper's model (docs/model.md)."""
    import yaml

    from recbole_mind import properties
    from recbole_mind.model.hyper_parameters import read_hyper_parameters

    paper = yaml.safe_load(properties.MIND_PAPER.read_text())
    config = build_config("MIND", "tiny", config_files=[properties.MIND_PAPER], config_dict=tiny_config)
    hp = vars(read_hyper_parameters(config))
    assert {k: hp[k] for k in paper} == {k: (float(v) if isinstance(hp[k], float) else v) for k, v in paper.items()}
    assert (hp["dynamic_interest"], hp["behaviour_window"], hp["attention_power"]) == (True, 0, 2.0)
    argv = ["--config_files", str(properties.MIND_PAPER), "--dataset", "tiny", *_cli_args(tiny_config)]
    assert main(argv) == 0
    assert "MIND on tiny: 1 epochs" in capsys.readouterr().out


def test_threads_default_never_exceeds_the_free_cores(monkeypatch):
    import pytest

    from recbole_mind import cli
    from recbole_mind.errors import UserError

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(cli, "free_cores", lambda: 1)  # the other core is busy
        assert cli.set_threads(None) == 1
        assert cli.set_threads(2) == 2  # asked for explicitly
        monkeypatch.setattr(cli, "free_cores", lambda: 8)
        torch.set_num_threads(2)
        assert cli.set_threads(None) == 2  # never more than torch's own count
        with pytest.raises(UserError, match="--torch_threads must be 1 or more"):
            cli.set_threads(0)
    finally:
        torch.set_num_threads(before)
