"""bench.interest_tradeoff: interest cosine against Recall@50 over an experiment log's runs."""

import json

import pytest

from bench.interest_tradeoff import main, rank_correlation, tradeoff


def record(tag, k, recall, cosine=None, split=1, overrides=None, loss="CE"):
    health = {"mean_cosine": cosine} if k > 1 else {"mean_cosine": None}
    return {"tag": tag, "resolved": {"interest_num": k, "loss_type": loss}, "overrides": overrides or {},
            "split": {"seed": split}, "test": {"recall@50": recall, "recall@20": recall / 2},
            "interest_health": health}


RECORDS = [
    record("k1_a", 1, 0.20), record("k1_b", 1, 0.30),
    record("apart", 4, 0.2800, cosine=0.50),           # 1.12x the mean 0.25, cosine under 0.7
    record("close", 4, 0.2900, cosine=0.90),           # 1.16x, but the interests are one
    record("apart_weak", 8, 0.2600, cosine=0.40),      # 1.04x
    record("other_split", 4, 0.5, cosine=0.1, split=2),
    record("other_loss", 4, 0.5, cosine=0.1, loss="SSM"),
    record("features", 4, 0.5, cosine=0.1, overrides={"item_features": ["genre"]}),
    record("no_health", 4, 0.5),
]


def test_points_are_the_matching_runs_against_the_mean_of_the_reference_runs():
    reference, points = tradeoff(RECORDS, {"split_seed": 1, "loss_type": "CE"}, ["item_features"], ["k1_a", "k1_b"])
    assert reference == pytest.approx(0.25)
    assert [p["tag"] for p in points] == ["apart_weak", "apart", "close"]  # by cosine
    assert [p["ratio"] for p in points] == [1.04, 1.12, 1.16]
    assert [p["both_goals"] for p in points] == [False, True, False]
    _, unfiltered = tradeoff(RECORDS, {}, [], ["k1_a"])
    assert {p["tag"] for p in unfiltered} == {"apart", "close", "apart_weak", "other_split", "other_loss", "features"}


def test_the_report_names_its_command_and_the_runs_that_meet_both_goals(tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    out = str(tmp_path / "tradeoff")
    main(["--log", str(log), "--where", "split_seed=1", "loss_type=CE", "--without", "item_features",
          "--reference", "k1_a", "k1_b", "--out", out])
    text = (tmp_path / "tradeoff.md").read_text()
    assert "--where split_seed=1 loss_type=CE" in text and "1 of 3" in text
    assert "over the runs: 1.0." in text  # cosine 0.4, 0.5, 0.9 against Recall@50 0.26, 0.28, 0.29
    assert "| 2 | `apart` | 4 | 0.500 | 0.2800 | 1.12x |" in text
    stored = json.loads((tmp_path / "tradeoff.json").read_text())
    assert [p["tag"] for p in stored["runs"] if p["both_goals"]] == ["apart"]
    assert (tmp_path / "tradeoff.png").stat().st_size > 0 and "1 of 3" in capsys.readouterr().out


def test_rank_correlation_against_a_hand_count():
    points = [{"interest_cosine": c, "recall@50": r} for c, r in [(0.1, 0.3), (0.2, 0.1), (0.3, 0.2), (0.4, 0.2)]]
    # ranks 1 2 3 4 against 4 1 2.5 2.5: Pearson of the ranks
    x, y = [1, 2, 3, 4], [4, 1, 2.5, 2.5]
    mx, my = sum(x) / 4, sum(y) / 4
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    expected = cov / (sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y)) ** 0.5
    assert rank_correlation(points) == pytest.approx(expected, abs=1e-3)
    assert rank_correlation(points[:2]) is None


@pytest.mark.parametrize("args, message", [
    (["--reference", "missing"], "--reference names runs the log does not hold: missing"),
    (["--reference", "close"], "--reference runs must have interest_num 1: close"),
    (["--reference", "k1_a", "--where", "split_seed"], "--where takes KEY=VALUE"),
    (["--reference", "k1_a", "--where", "split_seed=9"], "no multi-interest run"),
])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys, args, message):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    with pytest.raises(SystemExit) as exit_info:
        main(["--log", str(log), "--out", str(tmp_path / "t"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "t.md").exists()
