"""bench.mind_experiments: the markdown table of an experiment log; bad overrides."""

import json
import sys

import pytest

from bench.mind_experiments import main, read_log, table


def test_the_table_shows_the_metrics_each_protocol_logs(tmp_path, capsys):
    loo = {"tag": "loo", "overrides": {"epochs": 20}, "valid": {"ndcg@10": 0.1},
           "test": {"recall@10": 0.2, "recall@50": 0.4, "ndcg@10": 0.11, "ndcg@50": 0.15, "mrr@10": 0.08},
           "best_epoch": 6, "epochs_run": 12, "train_s_per_epoch": 4.5}
    multi = {"tag": "mt", "overrides": {}, "valid": {"recall@50": 0.41},
             "test": {"recall@20": 0.23, "recall@50": 0.4022, "ndcg@50": 0.3, "hit@50": 0.96},
             "best_epoch": 9, "epochs_run": 15, "train_s_per_epoch": None}
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps(multi) + "\n\n")
    assert [r["tag"] for r in read_log(log)] == ["mt"]
    table(log)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| tag | overrides | valid recall@50 | test recall@20 | test recall@50 | test ndcg@50 "
                        "| test hit@50 | best epoch / run | train s/epoch |")
    assert lines[2] == "| mt |  | 0.4100 | 0.2300 | 0.4022 | 0.3000 | 0.9600 | 9 / 15 | - |"
    log.write_text(json.dumps(loo) + "\n" + json.dumps(multi) + "\n")
    table(log)
    lines = capsys.readouterr().out.splitlines()
    assert "valid ndcg@10" in lines[0] and lines[1].count("|---") == 12
    assert lines[3].startswith("| mt |  | - | - | 0.2300 | 0.4022 | - | 0.3000 | - | 0.9600 |")


@pytest.mark.parametrize("pair", ["learning_rate", "=0.003"])
def test_a_malformed_override_is_one_error_line_and_exit_2(tmp_path, monkeypatch, capsys, pair):
    log = tmp_path / "log.jsonl"
    monkeypatch.setattr(sys, "argv", ["mind_experiments", "--log", str(log), "--tag", "t", pair])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: override takes KEY=VALUE") and len(err.splitlines()) == 1
    assert not log.exists()
