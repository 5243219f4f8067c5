"""The --compare mode: two models on the tiny dataset, the report files, resuming, time-budget pieces."""

import json
import os

import pytest

from recbole_mind import cli, compare
from recbole_mind.compare import parse_lr_grid
from recbole_mind.errors import UserError
from recbole_mind.version import __version__

GRID = [0.001, 0.01]


def compare_argv(tiny_root, results_dir, *extra):
    return ["--compare", "MIND", "GRU4Rec", "--dataset", "tiny", "--lr_grid", "0.001,0.01",
            "--results_dir", str(results_dir), "--torch_threads", "1",  # tiny runs: 1 thread is fastest
            f"--data_path={tiny_root}", "--epochs=1",
            "--topk=[5,10]", "--state=ERROR", "--train_batch_size=64", *extra]


def test_compare_writes_report_and_resumes(tiny_root, tmp_path, capsys):
    results = tmp_path / "results"
    assert cli.main(compare_argv(tiny_root, results)) == 0

    reports = results / "leave_one_out"
    runs_dir = reports / "runs" / "tiny"
    run_files = {(m, lr): runs_dir / f"{m}_lr{lr:g}.json" for m in ("MIND", "GRU4Rec") for lr in GRID}
    records = {}
    for key, path in run_files.items():
        records[key] = json.loads(path.read_text())
        assert records[key]["anomaly_detection"] is False
        assert records[key]["torch_threads"] == 1
        assert records[key]["result"]["epochs_run"] == 1
        assert records[key]["version"] == records[key]["protocol"]["version"] == __version__
        assert (runs_dir / f"{path.stem}.log").is_file()

    report = json.loads((reports / "tiny.json").read_text())
    assert report["dataset"] == "tiny"
    protocol = report["protocol"]
    assert protocol["epochs"] == 1 and protocol["epoch_budget"]["epochs"] == 1
    assert protocol["embedding_size"] == 64 and protocol["hidden_size"] == 64
    assert protocol["MAX_ITEM_LIST_LENGTH"] == 50 and protocol["loss_type"] == "CE"
    assert protocol["lr_grid"] == GRID and protocol["topk"] == [5, 10]
    assert protocol["torch_threads"] == 1
    assert set(report["models"]) == {"MIND", "GRU4Rec"}
    expected = {f"{m}@{k}" for m in ("recall", "ndcg", "mrr", "hit") for k in (5, 10)}
    for model, entry in report["models"].items():
        assert set(entry["test"]) == expected
        assert all(0.0 <= v <= 1.0 for v in entry["test"].values())
        assert entry["test"]["recall@5"] <= entry["test"]["recall@10"]
        # the chosen learning rate is the grid value with the best validation NDCG@10
        valid = {lr: records[model, lr]["result"]["best_valid_result"]["ndcg@10"] for lr in GRID}
        assert entry["learning_rate"] == max(GRID, key=lambda lr: (valid[lr], -GRID.index(lr)))
        chosen = records[model, entry["learning_rate"]]
        assert entry["test"] == chosen["result"]["test_result"]
        # the second test evaluation, input sequences out of the ranking: MIND with exclude_history
        # on already ranks that way; GRU4Rec does not. The tiny data repeats items, so auto
        # turns MIND's filter off there and both rankings change.
        masked = entry["test_history_excluded"]
        assert masked == chosen["result"]["test_result_history_excluded"]
        if model == "MIND":
            assert entry["exclude_history"] == chosen["result"]["exclude_history"]
            assert entry["exclude_history"]["setting"] == "auto" and entry["exclude_history"]["on"] is False
        assert set(masked) == expected and masked != entry["test"]
        assert entry["best_epoch"] == 1 and entry["train_s_per_epoch"] > 0 and entry["eval_s"] > 0
        assert chosen["result"]["epoch_seconds"] and entry["train_s_per_epoch_min"] == min(
            chosen["result"]["epoch_seconds"])
        assert 50 < entry["peak_rss_mb"] < 16000

    md = (reports / "tiny.md").read_text()
    assert "| Model | LR | Recall@5 | Recall@10 | NDCG@5 | NDCG@10 | MRR@5 | MRR@10 | Hit@5 | Hit@10 |" in md
    assert "@50" not in md and "@20" not in md
    assert "epoch budget 1" in md and "peak RSS MB" in md
    assert "## Test set, each user's input sequence removed from the ranking" in md
    for model, entry in report["models"].items():
        prefix = f"| {model} | {entry['learning_rate']:g} |"
        row = next(line for line in md.splitlines() if line.startswith(prefix))
        assert f"{entry['test']['ndcg@10']:.4f}" in row
    assert (reports / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "MIND lr=0.001: 1 epochs" in capsys.readouterr().out

    # Resume: nothing is trained again, the report is rebuilt from the stored runs.
    stamps = {key: path.stat().st_mtime_ns for key, path in run_files.items()}
    os.remove(reports / "tiny.json")
    assert cli.main(compare_argv(tiny_root, results)) == 0
    assert {key: path.stat().st_mtime_ns for key, path in run_files.items()} == stamps
    assert json.loads((reports / "tiny.json").read_text())["models"] == report["models"]
    assert "lr=" not in capsys.readouterr().out  # no run summary line: no run happened

    # A stored run made under another protocol is refused, not silently reused.
    assert cli.main(compare_argv(tiny_root, results, "--stopping_step=3")) == 2
    assert "another protocol" in capsys.readouterr().err
    # So is a MIND run after MIND's own settings changed without an override (a config file
    # here; a new MIND.yaml default the same way); the report says which settings it used.
    assert report["models"]["MIND"]["model_settings"]["routing_init_std"] == 0.1
    assert report["models"]["GRU4Rec"]["model_settings"] is None
    settings = tmp_path / "wider_routing.yaml"
    settings.write_text("routing_init_std: 0.5\n")
    assert cli.main(compare_argv(tiny_root, results, "--config_files", str(settings))) == 2
    assert "differs in model_settings" in capsys.readouterr().err
    # A record written by another version of the package is refused too: it may compute other figures.
    record = json.loads(run_files[("MIND", 0.001)].read_text())
    record["protocol"]["version"] = "0.0.1"
    run_files[("MIND", 0.001)].write_text(json.dumps(record))
    assert cli.main(compare_argv(tiny_root, results)) == 2
    assert "differs in version" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["abc", "0.001,-1", "", "nan"])
def test_bad_lr_grid_is_a_user_error(text):
    with pytest.raises(UserError, match="--lr_grid"):
        parse_lr_grid(text)


def test_lr_grid_per_model():
    from recbole_mind.compare import parse_lr_grid as grids

    assert grids("0.003,SINE=0.001", ["MIND", "SINE"]) == {"MIND": [0.003], "SINE": [0.001]}
    assert grids("SINE=0.001,MIND=0.003,MIND=0.001", ["MIND", "SINE"]) == {"MIND": [0.003, 0.001], "SINE": [0.001]}
    with pytest.raises(UserError, match="gives no learning rate for MIND"):
        grids("SINE=0.001", ["MIND", "SINE"])
    with pytest.raises(UserError, match="names GRU4Rec"):
        grids("0.001,GRU4Rec=0.01", ["MIND"])


def test_lr_grid_parsing():
    assert parse_lr_grid("0.001, 0.003,0.001") == [0.001, 0.003]


def test_bad_input_exits_2_before_training(tiny_root, tmp_path, capsys):
    argv = ["--compare", "MIND", "NoSuchModel", "--dataset", "tiny", "--results_dir", str(tmp_path),
            f"--data_path={tiny_root}"]
    assert cli.main(argv) == 2
    assert "unknown model 'NoSuchModel'" in capsys.readouterr().err
    assert cli.main(argv[:2] + ["--dataset", "tiny", "--learning_rate=0.1"]) == 2
    assert "--lr_grid" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_failed_run_is_reported_and_not_stored(tiny_root, tmp_path, capsys):
    results = tmp_path / "results"
    argv = ["--compare", "MIND", "--dataset", "tiny", "--lr_grid", "0.001", "--results_dir",
            str(results), "--torch_threads", "1", f"--data_path={tiny_root}", "--epochs=1",
            "--topk=[5,10]", "--state=ERROR", "--item_features=[no_such_field]"]
    assert cli.main(argv) == 2
    assert "1 run(s) failed: MIND lr=0.001" in capsys.readouterr().err
    reports = results / "leave_one_out"
    runs_dir = reports / "runs" / "tiny"
    assert not (runs_dir / "MIND_lr0.001.json").exists()
    assert "no_such_field" in (runs_dir / "MIND_lr0.001.log").read_text()
    assert not (reports / "tiny.json").exists()


def test_time_budget_pauses_and_the_same_command_resumes_exactly(tiny_root, tmp_path, capsys):
    def argv(results, *extra):
        return ["--compare", "MIND", "--dataset", "tiny", "--lr_grid", "0.01", "--no_report",
                "--results_dir", str(results), "--torch_threads", "1", f"--data_path={tiny_root}",
                "--epochs=2", "--topk=[5,10]", "--state=ERROR", "--train_batch_size=64", *extra]

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert cli.main(argv(whole)) == 0
    # a budget already spent: each call trains one epoch (every call makes progress), then stops
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv(cut, "--time_budget", "1e-9"))
    assert stopped.value.code == 75
    assert "paused after epoch 1 of 2" in capsys.readouterr().out
    runs = cut / "leave_one_out" / "runs" / "tiny"
    assert json.loads((runs / "MIND_lr0.01.state.json").read_text())["epoch"] == 0
    assert not (runs / "MIND_lr0.01.json").exists()

    assert cli.main(argv(cut, "--time_budget", "1e-9")) == 0  # epoch 2 is the last: no pause
    assert not (runs / "MIND_lr0.01.state.json").exists() and not (runs / "MIND_lr0.01.state.pth").exists()
    one = json.loads((whole / "leave_one_out" / "runs" / "tiny" / "MIND_lr0.01.json").read_text())
    two = json.loads((runs / "MIND_lr0.01.json").read_text())
    assert (one["pieces"], two["pieces"]) == (1, 2)
    assert two["result"]["epochs_run"] == 2
    for key in ("test_result", "best_valid_result", "best_valid_score", "best_epoch"):
        assert two["result"][key] == one["result"][key], key


def test_compare_under_the_multi_target_protocol_over_two_user_splits(tiny_root, tmp_path, capsys):
    results = tmp_path / "results"
    argv = ["--compare", "MIND", "MIND-K1", "GRU4Rec", "--dataset", "tiny", "--lr_grid", "0.01",
            "--results_dir", str(results), "--torch_threads", "1", f"--data_path={tiny_root}",
            "--eval_protocol=multi_target", "--split_seeds", "1,2", "--epochs=1", "--topk=[5,10]",
            "--valid_metric=Recall@10", "--state=ERROR", "--train_batch_size=64", "--hidden_size=16"]
    assert cli.main(argv) == 0
    report = json.loads((results / "multi_target" / "tiny.json").read_text())
    assert set(report["models"]) == {"MIND", "MIND-K1", "GRU4Rec"}
    assert report["protocol"]["eval_protocol"] == "multi_target" and report["protocol"]["split_seeds"] == [1, 2]
    assert set(report["protocol"]["user_splits"]) == {"1", "2"}
    runs = results / "multi_target" / "runs" / "tiny"
    for name in ("MIND", "MIND-K1", "GRU4Rec"):
        entry = report["models"][name]
        per_seed = [json.loads((runs / f"{name}_lr0.01_split{seed}.json").read_text()) for seed in (1, 2)]
        assert [r["result"]["split"]["seed"] for r in per_seed] == [1, 2]
        for key in ("recall@10", "ndcg@10", "hit@10", "diversity@10", "itemcoverage@10"):
            values = [r["result"]["test_result"][key] for r in per_seed]
            assert entry["test"][key] == pytest.approx(sum(values) / 2)
            assert entry["test_std"][key] == pytest.approx(abs(values[0] - values[1]) / 2)
        assert (entry["interest_cosine"] is None) == (name != "MIND")  # K = 1 has no pair of interests
        assert (entry["interest_health"] is None) == (name == "GRU4Rec")
        assert entry["test_history_excluded"] is None and "train_s_per_epoch" in entry
    assert report["models"]["MIND-K1"]["model_settings"]["interest_num"] == 1
    assert report["models"]["MIND-K1"]["interest_health"]["mean_cosine"] is None  # one interest: no pairs
    md = (results / "multi_target" / "tiny.md").read_text()
    assert "users split at random 8:1:1" in md and "Diversity@10" in md and "± " in md
    assert "## Interest health" in md and "input sequence removed" in md
    assert "## Per user split (test Recall@10)" in md and "| Model | split 1 | split 2 | first on |" in md
    # the same seeds again train nothing; --split_seeds under leave-one-out is refused
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "lr=" not in capsys.readouterr().out
    assert cli.main([a for a in argv if a != "--eval_protocol=multi_target"]) == 2
    assert "--split_seeds is for the multi_target protocol" in capsys.readouterr().err
    # --diversity_lambda re-ranks the test lists: another protocol (a stored run is refused without
    # --rerun), stated in the report
    diverse = ["--compare", "MIND", *argv[4:], "--diversity_lambda", "10"]
    assert cli.main(diverse) == 2
    assert "differs in diversity_lambda" in capsys.readouterr().err
    assert cli.main([*diverse, "--rerun"]) == 0
    again = json.loads((results / "multi_target" / "tiny.json").read_text())
    assert again["protocol"]["diversity_lambda"] == 10
    assert again["models"]["MIND"]["test"]["diversity@10"] >= report["models"]["MIND"]["test"]["diversity@10"]
    assert "diversity_lambda 10; validation by score" in (results / "multi_target" / "tiny.md").read_text()


def test_a_mind_key_added_later_matches_a_stored_run_only_at_its_default():
    from recbole_mind.compare import MODEL_SETTINGS, same_protocol

    fresh = {"dataset": "tiny", "version": __version__,
             MODEL_SETTINGS: {"interest_num": 4, "interest_diversity": 0.0, "routing_gradient": False}}
    stored = {"dataset": "tiny", "version": __version__, MODEL_SETTINGS: {"interest_num": 4}}
    assert same_protocol(stored, fresh)  # the stored run predates the keys; their defaults are that model
    assert not same_protocol(stored, {**fresh, MODEL_SETTINGS: {**fresh[MODEL_SETTINGS], "routing_gradient": True}})
    assert not same_protocol({**stored, MODEL_SETTINGS: {"interest_num": 1}}, fresh)
    assert not same_protocol(fresh, stored)  # a key the fresh settings lack is no match
    assert same_protocol({"dataset": "tiny", MODEL_SETTINGS: None}, {"dataset": "tiny", MODEL_SETTINGS: None})


def test_the_per_split_table_bolds_each_splits_best_and_counts_firsts():
    def model(*recalls):
        return {"seeds": {str(seed): {"test": {"recall@50": r}} for seed, r in zip((1, 2, 3), recalls)}}

    report = {"protocol": {"split_seeds": [1, 2, 3], "valid_metric": "Recall@50"},
              "models": {"A": model(0.40, 0.30, 0.5), "B": model(0.41, 0.29, 0.5)}}
    lines = compare.splits_section(report)
    assert lines[0] == "## Per user split (test Recall@50)"
    assert "| A | 0.4000 | **0.3000** | **0.5000** | 2 |" in lines
    assert "| B | **0.4100** | 0.2900 | **0.5000** | 2 |" in lines
    report["protocol"]["split_seeds"] = [1]
    assert compare.splits_section(report) == []
