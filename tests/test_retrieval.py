"""Multi-interest retrieval: a flat index equals full_sort_predict, masks and history filters hold,
the CLI writes the dataset's own tokens."""

import csv
import os

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_mind import checkpoint, cli, histories, retrieve, train
from recbole_mind.errors import UserError

TOPN = 10
TIE = 1e-5  # scores closer than this count as ties (faiss and torch sum in different orders)


@pytest.fixture(scope="module")
def trained(tiny_root, tmp_path_factory):
    """A MIND checkpoint trained 2 epochs on the tiny dataset, loaded back for retrieval."""
    folder = tmp_path_factory.mktemp("retrieval")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)  # RecBole writes ./log
        result = train.run("MIND", "tiny", config_dict={
            "data_path": tiny_root, "checkpoint_dir": str(folder / "saved"), "epochs": 2,
            "train_batch_size": 64, "eval_batch_size": 64, "MAX_ITEM_LIST_LENGTH": 10,
            "embedding_size": 16, "show_progress": False, "state": "ERROR", "seed": 7, "topk": [5, 10],
            # full_sort_predict ranks every item, so the flat index can be checked against it
            # with and without retrieval's own history filter
            "exclude_history": False, "behaviour_window": 0,
            # the paper's dynamic K: short histories get fewer than K interests, masked in retrieval
            "dynamic_interest": True,
        })
        config, dataset, _, _, _, model = checkpoint.restore(result["saved_model_file"])
    users, item_seq, item_seq_len, history = histories.user_histories(dataset, model.max_seq_length)
    interests, mask = retrieve.user_interests(model, users, item_seq, item_seq_len)
    return {
        "path": result["saved_model_file"], "dataset": dataset, "model": model, "users": users,
        "item_seq": item_seq, "item_seq_len": item_seq_len, "history": history,
        "interests": interests, "mask": mask,
        "item_vectors": model.item_vectors().detach().numpy(),
    }


def full_sort(trained, exclude_history):
    """full_sort_predict scores [U, n_items] of the same queries, padding (and history) at -inf."""
    model = trained["model"]
    interaction = Interaction({
        model.ITEM_SEQ: torch.as_tensor(trained["item_seq"]),
        model.ITEM_SEQ_LEN: torch.as_tensor(trained["item_seq_len"]),
        model.USER_ID: torch.as_tensor(trained["users"]),
    })
    with torch.no_grad():
        scores = model.full_sort_predict(interaction).numpy().copy()
    scores[:, 0] = -np.inf
    if exclude_history:
        keys = trained["history"]
        scores[keys // model.n_items, keys % model.n_items] = -np.inf
    return scores


def assert_matches_full_sort(items, scores, reference, topn):
    """Same items as the top ``topn`` of ``reference``, in the same order up to ties."""
    best = -np.sort(-reference, axis=1)[:, :topn + 1]
    assert np.all(items > 0)
    rows = np.arange(len(items))[:, None]
    np.testing.assert_allclose(scores, reference[rows, items], rtol=0, atol=TIE)  # exact rescoring
    np.testing.assert_allclose(reference[rows, items], best[:, :topn], rtol=0, atol=TIE)  # the top, in order
    clear = best[:, topn - 1] - best[:, topn] > TIE  # no tie across the cut: the set is determined
    assert clear.mean() > 0.8
    expected = np.argsort(-reference, axis=1, kind="stable")[:, :topn]
    for got, want in zip(items[clear], expected[clear]):
        assert set(got) == set(want)


@pytest.mark.parametrize("exclude_history", [False, True])
def test_flat_equals_full_sort_predict(trained, exclude_history):
    items, scores = retrieve.retrieve(
        trained["interests"], trained["mask"], trained["item_vectors"], TOPN, "flat",
        exclude=trained["history"] if exclude_history else None,
    )
    assert items.shape == (len(trained["users"]), TOPN)
    assert_matches_full_sort(items, scores, full_sort(trained, exclude_history), TOPN)


def test_flat_mixture_with_every_item_a_candidate_equals_the_mixture_ranking(trained):
    """With ``interest_merge: mixture`` the merge scores candidates by tau log sum_j exp(s_j / tau);
    when each interest's list holds every item, the lists are the full mixture ranking's top N."""
    interests, mask, vectors = (torch.as_tensor(trained[k]) for k in ("interests", "mask", "item_vectors"))
    tau = 0.1
    per_interest = torch.einsum("ukd,nd->ukn", interests, vectors).masked_fill(~mask.unsqueeze(-1), float("-inf"))
    reference = (tau * torch.logsumexp(per_interest / tau, dim=1)).numpy()
    reference[:, 0] = -np.inf
    oversample = -(-len(vectors) // TOPN)  # each interest keeps the whole catalogue
    items, scores = retrieve.retrieve(trained["interests"], trained["mask"], trained["item_vectors"], TOPN, "flat",
                                      params=retrieve.IndexParams(oversample=oversample), merge="mixture",
                                      temperature=tau)
    assert_matches_full_sort(items, scores, reference, TOPN)
    maximum, _ = retrieve.retrieve(trained["interests"], trained["mask"], trained["item_vectors"], TOPN, "flat")
    assert (maximum != items).any()  # the mixture ranks differently from the max


def test_history_is_removed_and_lists_are_deep_enough(trained):
    n_items = trained["model"].n_items
    seen = np.bincount(trained["history"] // n_items, minlength=len(trained["users"]))
    reference = full_sort(trained, True)
    # top 5 with up to 19 of 40 items seen: the first depth (10) is often mostly history, so the
    # rows that fall short are searched again deeper; top 25: some users run out of catalogue.
    for topn in (5, 25):
        items, scores = retrieve.retrieve(trained["interests"], trained["mask"], trained["item_vectors"],
                                           topn, "flat", exclude=trained["history"])
        keys = np.arange(len(items))[:, None] * n_items + items
        assert not np.isin(keys[items > 0], trained["history"]).any()
        available = np.minimum(topn, n_items - 1 - seen)
        assert np.all((items > 0).sum(1) == available)
        assert np.all(scores[items < 0] == -np.inf)
        rows = available == topn
        assert_matches_full_sort(items[rows], scores[rows], reference[rows], topn)
    assert (n_items - 1 - seen < 25).any()


def test_inactive_interests_never_contribute(trained):
    interests, mask = trained["interests"].copy(), trained["mask"]
    assert (~mask).any(), "the tiny data should give some users fewer than K interests"
    plain = retrieve.retrieve(interests, mask, trained["item_vectors"], TOPN, "flat")
    # Point every inactive slot hard at one item: if a masked slot were searched or scored,
    # that item would top those users' lists.
    target = int(np.argmin(np.linalg.norm(trained["item_vectors"][1:], axis=1))) + 1
    interests[~mask] = 1e3 * trained["item_vectors"][target]
    poisoned = retrieve.retrieve(interests, mask, trained["item_vectors"], TOPN, "flat")
    np.testing.assert_array_equal(plain[0], poisoned[0])
    np.testing.assert_array_equal(plain[1], poisoned[1])
    # and with the mask lifted, the item does take over: the check above can fail
    lifted = retrieve.retrieve(interests, np.ones_like(mask), trained["item_vectors"], TOPN, "flat")
    assert (lifted[0][(~mask).any(1), 0] == target).all()


def test_merge_removes_duplicates_and_keeps_the_max():
    interests = np.array([[[1.0, 0.0], [0.0, 1.0]]], dtype=np.float32)  # one user, two interests
    vectors = np.array([[0, 0], [3, 0], [0, 2], [1, 1], [2, 2.5]], dtype=np.float32)
    candidates = np.array([[[1, 4, 3], [4, 2, -1]]])  # item 4 found by both interests
    items, scores = retrieve.merge_candidates(interests, np.array([[True, True]]), vectors, candidates, 5)
    assert items.tolist() == [[1, 4, 2, 3, -1]]
    np.testing.assert_allclose(scores[0, :4], [3.0, 2.5, 2.0, 1.0])
    assert scores[0, 4] == -np.inf


def test_mixture_merge_scores_every_candidate_by_all_active_interests():
    interests = np.array([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]], dtype=np.float32)  # the third inactive
    mask = np.array([[True, True, False]])
    vectors = np.array([[0, 0], [3, 0], [0, 2], [1, 1], [2, 2.5]], dtype=np.float32)
    candidates = np.array([[[1, 4, 3], [4, 2, -1], [4, 3, 2]]])
    tau = 2.0
    items, scores = retrieve.merge_candidates(interests, mask, vectors, candidates, 5, merge="mixture",
                                              temperature=tau)
    by_hand = {i: tau * np.log(np.exp(vectors[i, 0] / tau) + np.exp(vectors[i, 1] / tau)) for i in (1, 2, 3, 4)}
    assert items.tolist() == [sorted(by_hand, key=by_hand.get, reverse=True) + [-1]]
    assert items[0, 0] == 4  # 2 and 2.5 together outrank the single 3 that wins the max
    np.testing.assert_allclose(scores[0, :4], [by_hand[i] for i in items[0, :4]], rtol=1e-6)


def test_user_histories_follow_the_inter_file(trained, tiny_root):
    dataset, length = trained["dataset"], trained["model"].max_seq_length
    sequences = {}
    with open(os.path.join(tiny_root, "tiny", "tiny.inter")) as f:
        next(f)
        for line in f:  # the fixture writes each user's rows in time order
            user, item, _ = line.split("\t")
            sequences.setdefault(user, []).append(item)
    tokens = dataset.id2token(dataset.uid_field, trained["users"])
    assert sorted(tokens) == sorted(u for u, s in sequences.items() if len(s) > 1)
    n_items = dataset.item_num
    for row, user in enumerate(tokens):
        want = sequences[user][-length:]
        got = trained["item_seq"][row, :trained["item_seq_len"][row]]
        assert list(dataset.id2token(dataset.iid_field, got)) == want
        assert not trained["item_seq"][row, len(want):].any()
        seen = trained["history"][trained["history"] // n_items == row] % n_items
        assert sorted(dataset.id2token(dataset.iid_field, seen)) == sorted(set(sequences[user]))


@pytest.mark.parametrize("kind,metric", [("hnsw", "l2"), ("hnsw", "ip"), ("ivf", None), ("ivfpq", None)])
def test_approximate_indexes_return_valid_lists(trained, kind, metric):
    # On 40 items an IVF over all cells and an HNSW beam wider than the catalogue are exact;
    # 4-bit PQ with 4x oversampling and exact re-scoring finds most of the top.
    params = retrieve.IndexParams(nprobe=64, pq_m=4, pq_bits=4, oversample=4, hnsw_metric=metric or "l2")
    items, scores = retrieve.retrieve(trained["interests"], trained["mask"], trained["item_vectors"],
                                       TOPN, kind, params, exclude=trained["history"])
    reference = full_sort(trained, True)
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert all(len(set(row)) == TOPN for row in items)
    truth = np.argsort(-reference, axis=1)[:, :TOPN]
    recall = np.mean([len(set(a) & set(b)) / TOPN for a, b in zip(items, truth)])
    assert recall >= (0.999 if kind != "ivfpq" else 0.8)
    np.testing.assert_allclose(scores, reference[np.arange(len(items))[:, None], items], atol=TIE)


def test_bad_index_parameters_are_user_errors(trained):
    args = (trained["interests"], trained["mask"], trained["item_vectors"], TOPN)
    with pytest.raises(UserError, match="pq_bits"):
        retrieve.retrieve(*args, "ivfpq", retrieve.IndexParams(pq_m=4, pq_bits=8))
    with pytest.raises(UserError, match="pq_m"):
        retrieve.retrieve(*args, "ivfpq", retrieve.IndexParams(pq_m=5, pq_bits=4))
    with pytest.raises(UserError, match="unknown index"):
        retrieve.retrieve(*args, "lsh")
    with pytest.raises(UserError, match="hnsw_metric"):
        retrieve.retrieve(*args, "hnsw", retrieve.IndexParams(hnsw_metric="cosine"))


def test_cli_writes_original_tokens_atomically(trained, tiny_root, tmp_path):
    out = tmp_path / "recs.csv"
    code = cli.main(["--retrieve", "--checkpoint", trained["path"], "--topk", "5", "--index", "flat",
                     "--output", str(out)])
    assert code == 0
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["user_id", "rank", "item_id", "score"]
    pairs = set()
    with open(os.path.join(tiny_root, "tiny", "tiny.inter")) as f:
        next(f)
        for line in f:
            pairs.add(tuple(line.split("\t")[:2]))
    file_items = {item for _, item in pairs}
    assert len(rows) == 5 * len(trained["users"])
    assert all(r["item_id"] in file_items for r in rows)

    # the tokens are the dataset's own ids: mapped back they are the top 5 of full_sort_predict,
    # the input sequence kept as the model keeps it (exclude_history False)
    dataset = trained["dataset"]
    row_of = {u: i for i, u in enumerate(dataset.id2token(dataset.uid_field, trained["users"]))}
    items = np.zeros((len(row_of), 5), dtype=np.int64)
    scores = np.zeros((len(row_of), 5), dtype=np.float32)
    for r in rows:
        row, rank = row_of[r["user_id"]], int(r["rank"]) - 1
        items[row, rank] = dataset.token2id(dataset.iid_field, r["item_id"])
        scores[row, rank] = float(r["score"])
    assert_matches_full_sort(items, scores, full_sort(trained, False), 5)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["--retrieve", "--checkpoint", str(tmp_path / "missing.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["--retrieve"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    not_a_checkpoint = tmp_path / "x.pth"
    torch.save({"weights": torch.zeros(1)}, not_a_checkpoint)
    assert cli.main(["--retrieve", "--checkpoint", str(not_a_checkpoint)]) == 2
    assert "not a RecBole checkpoint" in capsys.readouterr().err


def test_bare_topk_is_still_a_recbole_override(tiny_config):
    args, overrides = cli.parse_args(["--dataset", "tiny", "--topk=[3]", "--valid_metric=NDCG@3"]
                                     + [f"--{k}={v}" for k, v in tiny_config.items() if k != "topk"])
    result = cli.run_from_args(args, overrides)
    assert set(result["test_result"]) == {f"{m}@3" for m in ("recall", "mrr", "ndcg", "hit")}


def test_diversity_lambda_reranks_the_retrieved_lists(trained, tmp_path):
    """λ = 0 is the plain retrieval; a large λ returns the greedy re-ranking of the same merged
    candidates (diversify.greedy_rerank), scored by their exact max-interest scores."""
    from recbole_mind.diversify import greedy_rerank

    labels = torch.eye(4)[torch.arange(trained["item_vectors"].shape[0]) % 4]
    plain = retrieve.retrieve(trained["interests"], trained["mask"], trained["item_vectors"], 5, "flat")
    zero = retrieve.retrieve(trained["interests"], trained["mask"], trained["item_vectors"], 5, "flat",
                             labels=labels, lam=0.0)
    assert np.array_equal(plain[0], zero[0])
    items, scores = retrieve.retrieve(trained["interests"], trained["mask"], trained["item_vectors"], 5, "flat",
                                      labels=labels, lam=100.0)
    vectors = trained["item_vectors"]
    index = retrieve.build_index(vectors[1:], "flat")
    candidates = retrieve.search_interests(index, np.arange(1, len(vectors)), trained["interests"],
                                           trained["mask"], 5, len(vectors))
    merged = retrieve.merge_candidates(trained["interests"], trained["mask"], vectors, candidates,
                                       candidates.shape[1] * candidates.shape[2])
    expected = greedy_rerank(torch.as_tensor(merged[0]), torch.as_tensor(merged[1]), labels, 5, 100.0).numpy()
    assert np.array_equal(items, expected)
    for row, pool in zip(items, merged[0]):  # a huge λ spans every category the candidates have
        assert len({int(i) % 4 for i in row if i > 0}) == min(4, len({int(i) % 4 for i in pool if i > 0}))
    score_of = [dict(zip(i.tolist(), s.tolist())) for i, s in zip(*merged)]
    assert all(scores[r, c] == pytest.approx(score_of[r][int(items[r, c])])
               for r in range(len(items)) for c in range(items.shape[1]) if items[r, c] > 0)


def test_cli_retrieve_with_diversity_lambda(trained, tiny_root, tmp_path):
    out = tmp_path / "diverse.csv"
    assert cli.main(["--retrieve", "--checkpoint", trained["path"], "--topk", "5", "--diversity_lambda", "0.5",
                     "--output", str(out), f"--data_path={tiny_root}"]) == 0
    assert out.read_text().startswith("user_id,rank,item_id,score")


def test_retrieval_bench_measures_the_mixture_against_its_own_exact_ranking():
    from bench import retrieval as bench_retrieval

    rng = np.random.default_rng(0)
    items = rng.standard_normal((400, bench_retrieval.DIM)).astype(np.float32)
    interests = rng.standard_normal((12, 4, bench_retrieval.DIM)).astype(np.float32)
    mask = rng.random((12, 4)) < 0.6
    mask[:, 0] = True
    tau = 0.5
    truth = bench_retrieval.exact_topk(interests, mask, items, merge="mixture", temperature=tau)
    for user in range(len(interests)):  # plain-loop reference of the exact mixture ranking
        active = interests[user][mask[user]].astype(np.float64)
        scores = tau * np.log(np.exp(items.astype(np.float64) @ active.T / tau).sum(axis=1))
        assert sorted(truth[user]) == sorted(np.argsort(-scores)[:bench_retrieval.TOPN])
    result = bench_retrieval.bench_size(items, interests, mask, ["flat"], lambda message: None, {},
                                        merge="mixture", temperature=tau, oversamples=(1, 8))
    sweep = result["flat"]["sweep"]
    assert [s["params"] for s in sweep] == [{}, {"oversample": 8}]
    assert sweep[1]["recall@50"] == 1.0  # lists of 8 x 50 hold the whole catalogue
    assert sweep[0]["recall@50"] <= 1.0
