"""Hyper-parameter tuning through RecBole's HyperTuning: real one-epoch trials on the tiny data."""

import json
import os
import sys

import pytest
import yaml

from recbole_mind import cli, tune
from recbole_mind.errors import UserError


def _space(tmp_path, text):
    path = tmp_path / "space.hyper"
    path.write_text(text)
    return str(path)


def _trial_blocks(result_text):
    """The parameter lines of RecBole's export_result: the line before each 'Valid result:'."""
    lines = result_text.splitlines()
    return [lines[i - 1] for i, line in enumerate(lines) if line == "Valid result:"]


@pytest.fixture
def tuning_config(tiny_config, tmp_path, monkeypatch):
    # No checkpoint_dir: each trial must use a temporary folder and remove it. Point the temporary
    # folders at one place the test can inspect.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    config = dict(tiny_config)
    config.pop("checkpoint_dir")
    return config, scratch


@pytest.mark.parametrize("algo, space", [
    ("exhaustive", "interest_num choice [1,2]\n"),
    ("bayes", "learning_rate uniform 0.001,0.01\n"),
])
def test_two_trials_give_results_file_with_both_and_best(algo, space, tuning_config, tmp_path):
    config, scratch = tuning_config
    output = str(tmp_path / "out" / "MIND-tiny.result")
    summary = tune.tune("MIND", "tiny", _space(tmp_path, space), config_dict=config, algo=algo,
                         max_evals=2, output_file=output, display=(algo == "exhaustive"))

    trials = summary["trials"]
    assert len(trials) == 2
    assert all(t["epochs_run"] == 1 for t in trials)
    if algo == "exhaustive":  # the whole grid, each point once
        assert sorted(t["params"]["interest_num"] for t in trials) == [1, 2]
    else:
        assert trials[0]["params"]["learning_rate"] != trials[1]["params"]["learning_rate"]
        assert all(0.001 <= t["params"]["learning_rate"] <= 0.01 for t in trials)
    # The two trials are real, different runs.
    assert trials[0]["best_valid_result"] != trials[1]["best_valid_result"]

    best = max(trials, key=lambda t: t["best_valid_score"])
    assert summary["best_params"] == best["params"]
    assert summary["test_result"] == best["test_result"]
    assert best["best_valid_score"] == best["best_valid_result"]["ndcg@10"]

    text = open(output).read()
    blocks = _trial_blocks(text)
    assert len(blocks) == 2
    assert text.count("Test result:") == 2
    assert tune.HyperTuning.params2str(best["params"]) in blocks
    assert text.rstrip().endswith(tune.HyperTuning.params2str(best["params"]))
    assert f"Best parameters (trial {best['trial']} of 2" in text

    records = [json.loads(line) for line in open(output + ".trials.jsonl")]
    assert [r["params"] for r in records] == [t["params"] for t in trials]
    winning = yaml.safe_load(open(output + ".best.yaml"))
    assert {k: winning[k] for k in best["params"]} == best["params"]
    assert winning["epochs"] == 1 and "data_path" not in winning
    if algo == "exhaustive":
        assert os.path.getsize(output + ".html") > 0  # RecBole's plot_hyper
    # No checkpoint left behind (torch may keep its own cache folder there).
    assert not [p for p in scratch.iterdir() if p.name.startswith("recbole-mind-trial-")]
    assert not list(scratch.rglob("*.pth"))


def test_exhaustive_rejects_a_continuous_space(tiny_config, tmp_path):
    with pytest.raises(UserError, match="only 'choice'"):
        tune.tune("MIND", "tiny", _space(tmp_path, "learning_rate uniform 0.001,0.01\n"),
                   config_dict=tiny_config, output_file=str(tmp_path / "r.result"))


def test_cli_hyper_needs_a_params_file(capsys):
    assert cli.main(["--hyper", "--dataset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "--params_file recbole_mind/properties/hyper/MIND.hyper" in err
    assert "hyper/MIND-multi_target.hyper (--eval_protocol=multi_target)" in err
    assert cli.main(["--hyper", "--model", "SINE", "--dataset", "tiny"]) == 2
    assert "none ships for SINE" in capsys.readouterr().err
    assert cli.main(["--hyper", "--params_file", "missing.hyper"]) == 2
    assert "missing.hyper does not exist" in capsys.readouterr().err


def test_shipped_search_spaces_parse_and_fit_their_models():
    from recbole_mind import properties
    from recbole_mind.config import build_config

    shipped = sorted(path.name for path in properties.HYPER.glob("*.hyper"))
    assert shipped == ["GRU4Rec.hyper", "MIND-multi_target.hyper", "MIND.hyper", "SASRec.hyper"]
    for name in shipped:
        model, _, protocol = name[:-len(".hyper")].partition("-")
        space = tune.HyperTuning._build_space_from_file(str(properties.HYPER / name))
        assert space, name
        tune._validate_space_exhaustive_search(space)  # every line works with all three algos
        config = build_config(model, "ml-100k", config_dict={"eval_protocol": protocol} if protocol else None)
        unknown = [key for key in space if key not in config.final_config_dict]
        assert not unknown, f"{name}: {unknown} are not {model} config keys"
        if protocol == "multi_target":
            # the preset's own keys are searched; the label-aware attention's are not: the
            # preset's merged training does not use the attention
            assert config["training_scores"] == "merged"
            assert {"interest_num", "interest_diversity", "routing_iterations"} <= set(space)
            assert not {"attention_power", "attention_sampling"} & set(space)


def test_hyperopt_imports_without_pkg_resources():
    # compat._hyperopt_without_pkg_resources: hyperopt 0.2.5's atpe needs pkg_resources, which
    # setuptools >= 81 dropped; the stand-in must read atpe's files and then leave sys.modules.
    from hyperopt import atpe

    assert atpe.pkg_resources.resource_string(atpe.__name__, "atpe_models/scaling_model.json")
    if getattr(atpe.pkg_resources, "__file__", None) is None:  # the stand-in, not a real one
        assert sys.modules.get("pkg_resources") is not atpe.pkg_resources


def test_tuning_under_the_multi_target_protocol(tuning_config, tmp_path):
    config, _ = tuning_config
    config.update({"eval_protocol": "multi_target", "topk": [5, 10], "valid_metric": "Recall@10"})
    summary = tune.tune("MIND", "tiny", _space(tmp_path, "interest_num choice [1,2]\n"), config_dict=config,
                        max_evals=2, output_file=str(tmp_path / "mt.result"), display=False)
    assert len(summary["trials"]) == 2
    assert all("diversity@10" in t["test_result"] and t["split"]["users"]["test"] > 0 for t in summary["trials"])
    assert set(summary["best_valid_result"]) >= {"recall@10", "ndcg@10", "hit@10"}
