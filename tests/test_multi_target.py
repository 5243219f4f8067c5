"""The multi-target protocol (recbole_mind/multi_target.py): the user split, 80/20 rows in time
order, RecBole's metrics with several positives against a plain loop, the input sequence removed
for every model, Diversity@N, and a whole run."""

import math

import numpy as np
import pytest
import torch
from recbole.utils import init_seed

from recbole_mind import categories, multi_target
from recbole_mind.config import build_config
from recbole_mind.data import load_data
from recbole_mind.model import MIND
from recbole_mind.train import run
from recbole_mind.trainer import plugin_trainer

PROTOCOL = {"eval_protocol": "multi_target", "topk": [5, 10], "valid_metric": "Recall@10", "eval_batch_size": 7}


def prepared(tiny_config, model="MIND", **overrides):
    config = build_config(model, "tiny", config_dict=tiny_config | PROTOCOL | overrides)
    init_seed(config["seed"], True)
    return config, multi_target.prepare(config)


def test_users_split_disjoint_eight_one_one_and_seeded():
    users = np.arange(1, 101)
    train, valid, test = multi_target.split_users(users, 3)
    assert (len(train), len(valid), len(test)) == (80, 10, 10)
    assert sorted(np.r_[train, valid, test].tolist()) == users.tolist()
    again = multi_target.split_users(users[::-1], 3)
    assert all(np.array_equal(a, b) for a, b in zip((train, valid, test), again))
    assert not np.array_equal(multi_target.split_users(users, 4)[2], test)


def test_rows_take_the_first_80_percent_in_time_order_and_the_rest_as_targets():
    # user 1: 10 items; user 2: 2 items; user 3: 12 items, input longer than max_len 4;
    # user 4: its later items repeat its input (no new target: dropped and counted);
    # user 5: a later item repeated, and one equal to an input item
    histories = {1: list(range(1, 11)), 2: [5, 6], 3: list(range(20, 32)), 4: [7, 8, 9, 10, 7],
                 5: [1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 3, 11, 12, 13, 11]}
    users = np.array(list(histories))
    lengths = np.array([len(h) for h in histories.values()])
    items = np.concatenate([h for h in histories.values()])
    rows = multi_target.evaluation_rows((users, lengths, items), users, 4, 40)
    kept, item_seq, item_seq_len, targets, dropped = rows
    assert kept.tolist() == [1, 2, 3, 5] and dropped == 1
    assert item_seq.tolist()[0] == [5, 6, 7, 8] and item_seq_len[0] == 4  # first 8, last 4 of them
    assert sorted(t for t in targets[0] if t) == [9, 10]
    assert item_seq.tolist()[1] == [5, 0, 0, 0] and item_seq_len[1] == 1
    assert sorted(t for t in targets[1] if t) == [6]
    assert item_seq.tolist()[2] == [25, 26, 27, 28] and sorted(t for t in targets[2] if t) == [29, 30, 31]
    # user 5: n = 15, input its first 12 (the last 4: 9, 9, 3, 11); later 12, 13, 11: 11 is in the input
    assert item_seq.tolist()[3] == [9, 9, 3, 11] and sorted(t for t in targets[3] if t) == [12, 13]


def test_training_rows_come_from_train_users_only_and_the_split_is_recorded(tiny_config):
    config, data = prepared(tiny_config)
    uid = data.dataset.uid_field
    trained = set(data.train_data._dataset.inter_feat[uid].tolist())
    valid = set(data.valid_data._dataset.inter_feat[uid].tolist())
    test = set(data.test_data._dataset.inter_feat[uid].tolist())
    assert trained and valid and test and not (trained & valid) and not (trained & test) and not (valid & test)
    split = data.split
    assert split["users"]["valid"] == len(valid) and split["users"]["test"] == len(test)
    assert split["test_users"] == [str(t) for t in data.dataset.id2token(uid, sorted(test))]
    _, again = prepared(tiny_config)
    assert again.split["sha256"] == split["sha256"]
    _, other = prepared(tiny_config, split_seed=99)
    assert other.split["sha256"] != split["sha256"]


class Oracle(MIND):
    """Scores a row's targets 2, its input items 3 (the protocol must remove them) and the rest
    by a fixed random draw in [0, 1); ``miss`` moves one target of every row to the bottom."""

    targets = None
    miss = False

    def full_sort_predict(self, interaction):
        users = interaction[self.USER_ID]
        scores = torch.rand(len(users), self.n_items, generator=torch.Generator().manual_seed(0))
        for row, user in enumerate(users.tolist()):
            wanted = self.targets[user]
            scores[row, wanted] = 2.0
            if self.miss:
                scores[row, wanted[0]] = -1.0
        scores.scatter_(1, interaction[self.ITEM_SEQ], 3.0)
        return scores


def _evaluate(config, data, model):
    trainer = plugin_trainer(config, model)
    trainer.eval_collector.data_collect(data.train_data)
    return trainer.evaluate(data.test_data, load_best_model=False)


def test_a_model_that_ranks_the_targets_first_gets_recall_and_ndcg_one(tiny_config):
    config, data = prepared(tiny_config, MAX_ITEM_LIST_LENGTH=10)
    loader = data.test_data
    Oracle.targets = {int(u): [t for t in row.tolist() if t] for u, row in
                      zip(loader._dataset.inter_feat[data.dataset.uid_field], loader.targets)}
    assert max(len(t) for t in Oracle.targets.values()) <= 5  # every target fits in the top 5
    Oracle.miss = False
    result = _evaluate(config, data, Oracle(config, data.train_data._dataset))
    for n in (5, 10):
        assert result[f"recall@{n}"] == 1.0 and result[f"ndcg@{n}"] == 1.0 and result[f"hit@{n}"] == 1.0
    Oracle.miss = True
    result = _evaluate(config, data, Oracle(config, data.train_data._dataset))
    sizes = np.array([len(t) for t in Oracle.targets.values()])  # one target per row at the bottom now
    assert result["recall@10"] == pytest.approx(np.mean((sizes - 1) / sizes), abs=1e-4)
    assert result["hit@10"] == pytest.approx(np.mean(sizes > 1), abs=1e-4)


def _plain_loop_metrics(scores, inputs, targets, n):
    """Recall, NDCG and Hit at n of one row at a time, written from their definitions."""
    recall, ndcg, hit = [], [], []
    for row in range(len(scores)):
        ranked = [i for i in np.argsort(-scores[row], kind="stable") if i != 0 and i not in inputs[row]][:n]
        wanted = set(targets[row])
        hits = [1.0 if item in wanted else 0.0 for item in ranked]
        recall.append(sum(hits) / len(wanted))
        dcg = sum(h / math.log2(rank + 2) for rank, h in enumerate(hits))
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(len(wanted), n)))
        ndcg.append(dcg / ideal)
        hit.append(float(sum(hits) > 0))
    return np.mean(recall), np.mean(ndcg), np.mean(hit)


class RandomScores(MIND):
    def full_sort_predict(self, interaction):
        users = interaction[self.USER_ID]
        rows = [torch.rand(self.n_items, generator=torch.Generator().manual_seed(int(u))) for u in users]
        return torch.stack(rows)


def test_recbole_metrics_equal_a_plain_loop_on_random_scores(tiny_config):
    config, data = prepared(tiny_config)
    model = RandomScores(config, data.train_data._dataset)
    result = _evaluate(config, data, model)
    loader = data.test_data
    feat = loader._dataset.inter_feat
    users = feat[data.dataset.uid_field]
    scores = model.full_sort_predict(feat).numpy()
    inputs = [set(row[row > 0].tolist()) for row in feat[model.ITEM_SEQ]]
    targets = [[t for t in row.tolist() if t] for row in loader.targets]
    assert len(users) == len(targets) > 0
    for n in (5, 10):
        recall, ndcg, hit = _plain_loop_metrics(scores, inputs, targets, n)
        assert result[f"recall@{n}"] == pytest.approx(recall, abs=1e-4)
        assert result[f"ndcg@{n}"] == pytest.approx(ndcg, abs=1e-4)
        assert result[f"hit@{n}"] == pytest.approx(hit, abs=1e-4)


def test_diversity_on_a_hand_made_list():
    # items 1, 2: category a; item 3: b; item 4: a and b; item 5: none
    labels = torch.tensor([[0, 0], [1, 0], [1, 0], [0, 1], [0.5, 0.5], [0, 0]])
    top = torch.tensor([[1, 2, 3], [1, 3, 4], [3, 5, 1]])
    # row 0: pairs (1,2) same, (1,3) differ, (2,3) differ -> 2/3; row 1: (1,3) differ, (1,4) and
    # (3,4) share -> 1/3; row 2: (3,5) differ, (3,1) differ, (5,1) differ -> 1
    assert categories.diversity(top, labels) == pytest.approx((2 / 3 + 1 / 3 + 1) / 3)


@pytest.mark.parametrize("model", ["MIND", "GRU4Rec"])
def test_a_run_under_the_protocol_reports_its_split_diversity_and_removes_the_input(tiny_config, model):
    result = run(model, "tiny", config_dict=tiny_config | PROTOCOL | {"hidden_size": 16})
    test = result["test_result"]
    assert {"recall@10", "ndcg@10", "hit@10", "itemcoverage@10", "diversity@10"} <= set(test)
    assert 0.0 <= test["diversity@10"] <= 1.0
    assert result["split"]["users"]["test"] > 0 and result["split"]["seed"] == tiny_config["seed"]
    assert "genre" in result["diversity_categories"]  # the tiny .item file has a genre field
    assert ("interest_health" in result) == (model == "MIND")
    # every model's ranking leaves the input sequence out: its items never reach a top-N list
    config = build_config(model, "tiny", config_dict=tiny_config | PROTOCOL | {"hidden_size": 16})
    _, train_data, _, test_data = load_data(config)
    for interaction, (rows, items), _, _ in test_data:
        assert len(rows) == int((interaction[train_data._dataset.item_id_list_field] > 0).sum())


def _greedy_loop(candidates, scores, labels, n, lam):
    """ComiRec's aggregation one user at a time, written from its definition."""
    out = []
    for items, values in zip(candidates.tolist(), scores.tolist()):
        pool = {}
        for item, value in zip(items, values):
            if item >= 0 and item not in pool:
                pool[item] = value
        chosen = []
        while pool and len(chosen) < n:
            def gain(item):
                same = sum(bool(((labels[item] > 0) & (labels[j] > 0)).any()) for j in chosen)
                return pool[item] - lam * same
            best = max(pool, key=lambda item: (gain(item), -items.index(item)))
            chosen.append(best)
            del pool[best]
        out.append(chosen + [-1] * (n - len(chosen)))
    return out


@pytest.mark.parametrize("lam", [0.0, 0.3, 5.0])
def test_greedy_rerank_equals_a_plain_loop(lam):
    from recbole_mind.diversify import greedy_rerank

    generator = torch.Generator().manual_seed(3)
    labels = (torch.rand(30, 4, generator=generator) > 0.6).float()
    candidates = torch.randint(1, 30, (6, 12), generator=generator)
    candidates[0, -3:] = -1  # fewer real candidates
    scores = torch.rand(6, 12, generator=generator)
    picks = greedy_rerank(candidates, scores, labels, 8, lam)
    assert picks.tolist() == _greedy_loop(candidates, scores, labels, 8, lam)
    if lam == 0:  # by score alone: the top of the distinct candidates
        assert picks[1].tolist() == _greedy_loop(candidates[1:2], scores[1:2], labels, 8, 0.0)[0]


def test_diversity_lambda_reranks_the_test_lists(tiny_config):
    base = tiny_config | PROTOCOL | {"epochs": 2}
    plain = run("MIND", "tiny", config_dict=base)["test_result"]
    spread = run("MIND", "tiny", config_dict=base | {"diversity_lambda": 10.0})["test_result"]
    assert spread["diversity@10"] > plain["diversity@10"]
    assert spread != plain


def test_diversity_curve_at_lambda_zero_is_the_runs_own_test(tiny_config, tmp_path):
    from bench.diversity_curve import curve, write

    result = run("MIND", "tiny", config_dict=tiny_config | PROTOCOL | {"epochs": 2})
    points, described, n = curve(result["saved_model_file"], [0.0, 10.0])
    assert points[0.0] == pytest.approx(result["test_result"], abs=1e-4)
    assert points[10.0]["diversity@10"] > points[0.0]["diversity@10"]
    write({"a": points}, described, n, str(tmp_path / "curve"), "cmd")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG" and "| 10 |" in (tmp_path / "curve.md").read_text()


def test_the_protocol_picks_minds_preset_and_leave_one_out_keeps_the_defaults(tiny_config):
    import yaml

    from recbole_mind import properties
    from recbole_mind.model.hyper_parameters import read_hyper_parameters

    preset = yaml.safe_load(properties.MIND_MULTI_TARGET.read_text())
    multi = vars(read_hyper_parameters(build_config("MIND", "tiny", config_dict=tiny_config | PROTOCOL)))
    loo = vars(read_hyper_parameters(build_config("MIND", "tiny", config_dict=tiny_config)))
    defaults = yaml.safe_load(properties.MIND.read_text())
    assert all(multi[k] == v for k, v in preset.items())
    assert all(loo[k] == defaults[k] for k in preset)
    # the user's own settings and the paper's file still win over the preset
    paper = build_config("MIND", "tiny", config_files=[properties.MIND_PAPER], config_dict=tiny_config | PROTOCOL)
    paper_keys = yaml.safe_load(properties.MIND_PAPER.read_text())
    assert all(vars(read_hyper_parameters(paper))[k] == paper_keys.get(k, defaults[k]) for k in preset)
    assert vars(read_hyper_parameters(paper))["attention_sampling"] is False
    own = build_config("MIND", "tiny", config_dict=tiny_config | PROTOCOL | {"behaviour_window": 3})
    assert read_hyper_parameters(own).behaviour_window == 3
