"""The chunked exact softmax (recbole_mind/model/loss.py) against torch's cross_entropy on full logits."""

import pytest
import torch

from recbole_mind.model.loss import cross_entropy


def reference(user, table, labels, excluded, padding_idx):
    if user.dim() == 2:
        logits = user @ table.t()
    else:  # a copy of the max: the padding is set in place below
        logits = torch.einsum("bkd,nd->bkn", user, table).amax(dim=1).clone()
    if excluded is not None:
        dense = torch.zeros_like(logits, dtype=torch.bool)
        dense[excluded] = True
        logits = logits.masked_fill(dense, float("-inf"))
    if padding_idx is not None:
        logits[:, padding_idx] = float("-inf")
    return torch.nn.functional.cross_entropy(logits, labels)


@pytest.mark.parametrize("n_items, chunk_bytes", [(50, 4 << 20), (1001, 64 * 4 * 16), (1001, 4000 * 4 * 16)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("k", [None, 1, 3])
def test_loss_and_gradients_equal_the_plain_softmax(n_items, chunk_bytes, masked, k):
    """``k``: that many vectors a row (an item's logit is the best of them); None: one [B, d]."""
    generator = torch.Generator().manual_seed(n_items + masked)
    rows, d = 16, 8
    shape = (rows, d) if k is None else (rows, k, d)
    user = (3 * torch.randn(*shape, generator=generator, dtype=torch.float64)).requires_grad_()
    table = torch.randn(n_items, d, generator=generator, dtype=torch.float64).requires_grad_()
    labels = torch.randint(1, n_items, (rows,), generator=generator)
    labels[1] = labels[0]  # a repeated label: the one-hot term must add up
    excluded = None
    if masked:  # (row, item) pairs, with repeats, never a row's own label
        pairs = torch.rand(rows, n_items, generator=generator) < 0.3
        pairs[torch.arange(rows), labels] = False
        row_ids, item_ids = pairs.nonzero(as_tuple=True)
        excluded = (torch.cat([row_ids, row_ids[:5]]), torch.cat([item_ids, item_ids[:5]]))
    results = []
    for loss_fn in (reference, lambda *a: cross_entropy(*a[:4], padding_idx=a[4], chunk_bytes=chunk_bytes)):
        user.grad = table.grad = None
        loss = loss_fn(user, table, labels, excluded, 0)
        (2.5 * loss).backward()  # a non-unit upstream gradient
        results.append((loss.detach(), user.grad.clone(), table.grad.clone()))
    for expected, got in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # excluded items and the padding item get no gradient at all
    if masked:
        assert results[1][2][0].abs().sum() == 0


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_a_logit_reached_by_two_vectors_gives_its_gradient_once(dtype):
    """Two equal vectors in a row (MIND packs a row's inactive interests as copies of its first):
    each logit's gradient goes to the first copy only, and the copies' sum is the one-vector loss's."""
    generator = torch.Generator().manual_seed(7)
    rows, d, n_items = 8, 8, 300
    single = 3 * torch.randn(rows, d, generator=generator)
    table = torch.randn(n_items, d, generator=generator)
    labels = torch.randint(1, n_items, (rows,), generator=generator)
    grads = []
    for user in (single, torch.stack([single, single], dim=1)):
        user = user.clone().requires_grad_()
        cross_entropy(user, table, labels, padding_idx=0, chunk_bytes=64 * 4 * 16, matmul_dtype=dtype).backward()
        grads.append(user.grad)
    one, two = grads
    assert (two[:, 1] == 0).all()
    if dtype is None:
        torch.testing.assert_close(two[:, 0], one)
    else:  # bf16 matmuls of other shapes round differently; a second full copy would double it
        assert (two[:, 0] - one).norm() < 0.02 * one.norm()


def test_the_chunks_really_split_the_table():
    """With 64-item chunks a 1001-item table takes 16 chunks: the parametrised cases above cross
    chunk boundaries, the last chunk a partial one (41 items)."""
    from recbole_mind.model.loss import _chunk_size

    assert _chunk_size(16, 64 * 4 * 16) == 64 and -(-1001 // 64) == 16
    assert _chunk_size(2048, 4 << 20) == 512


@pytest.mark.parametrize("merge, k", [("max", None), ("mixture", 3)])
def test_bfloat16_matmuls_stay_close_to_float32_and_are_used(merge, k):
    generator = torch.Generator().manual_seed(3)
    user = torch.randn(32, *((k,) if k else ()), 16, generator=generator).requires_grad_()
    table = torch.randn(300, 16, generator=generator).requires_grad_()
    labels = torch.randint(1, 300, (32,), generator=generator)
    results = []
    for dtype in (None, torch.bfloat16):
        user.grad = table.grad = None
        loss = cross_entropy(user, table, labels, padding_idx=0, chunk_bytes=64 * 4 * 32, matmul_dtype=dtype,
                             merge=merge)
        loss.backward()
        assert loss.dtype == torch.float32 and user.grad.dtype == table.grad.dtype == torch.float32
        results.append((loss.detach(), user.grad.clone(), table.grad.clone()))
    (loss32, user32, table32), (loss16, user16, table16) = results
    assert loss16 != loss32  # the bf16 path really ran
    torch.testing.assert_close(loss16, loss32, rtol=1e-2, atol=0)
    for got, expected in ((user16, user32), (table16, table32)):
        assert (got - expected).norm() < 0.02 * expected.norm()


def test_mind_rejects_an_unknown_softmax_dtype(tiny_config):
    from recbole_mind.errors import UserError
    from recbole_mind.model.hyper_parameters import read_hyper_parameters
    from recbole_mind.config import build_config

    with pytest.raises(UserError, match="softmax_dtype must be auto, float32 or bfloat16"):
        read_hyper_parameters(build_config("MIND", "tiny", config_dict=tiny_config | {"softmax_dtype": "float16"}))


def test_interest_diversity_asks_for_the_routing_gradient(tiny_config):
    from recbole_mind.errors import UserError
    from recbole_mind.model.hyper_parameters import read_hyper_parameters
    from recbole_mind.config import build_config

    with pytest.raises(UserError, match="interest_diversity needs routing_gradient: True"):
        read_hyper_parameters(build_config("MIND", "tiny", config_dict=tiny_config | {"interest_diversity": 0.3}))
    both = {"interest_diversity": 0.3, "routing_gradient": True}
    assert read_hyper_parameters(build_config("MIND", "tiny", config_dict=tiny_config | both)).interest_diversity == 0.3


def test_merged_training_scores_ask_for_a_softmax(tiny_config):
    from recbole_mind.config import build_config
    from recbole_mind.errors import UserError
    from recbole_mind.model.hyper_parameters import read_hyper_parameters

    with pytest.raises(UserError, match="training_scores: merged needs loss_type: CE or SSM"):
        read_hyper_parameters(build_config("MIND", "tiny", config_dict=tiny_config | {
            "training_scores": "merged", "loss_type": "BPR"}))
    for loss in ("CE", "SSM"):
        read_hyper_parameters(build_config("MIND", "tiny", config_dict=tiny_config | {
            "training_scores": "merged", "loss_type": loss}))
    with pytest.raises(UserError, match="training_scores must be label_aware or merged, got 'max'"):
        read_hyper_parameters(build_config("MIND", "tiny", config_dict=tiny_config | {"training_scores": "max"}))


@pytest.mark.parametrize("native", [True, False])
def test_auto_softmax_dtype_follows_the_hardware(tiny_config, monkeypatch, native):
    from recbole_mind.model import hyper_parameters as mind
    from recbole_mind.config import build_config

    monkeypatch.setattr(mind, "native_bf16_matmul", lambda device: native)
    config = build_config("MIND", "tiny", config_dict=tiny_config | {"softmax_dtype": "auto"})
    assert mind.read_hyper_parameters(config).softmax_dtype == ("bfloat16" if native else "float32")
    for explicit in ("float32", "bfloat16"):  # an explicit choice is never overridden
        config = build_config("MIND", "tiny", config_dict=tiny_config | {"softmax_dtype": explicit})
        assert mind.read_hyper_parameters(config).softmax_dtype == explicit


def test_native_bf16_probe_answers_for_this_machine():
    import torch

    from recbole_mind.model.hyper_parameters import native_bf16_matmul

    assert native_bf16_matmul("cpu") in (True, False)
    assert native_bf16_matmul(torch.device("meta")) is False


def mixture_reference(user, table, labels, excluded, padding_idx, interest_mask):
    scores = torch.einsum("bkd,nd->bkn", user, table).masked_fill(~interest_mask.unsqueeze(-1), float("-inf"))
    logits = torch.logsumexp(scores, dim=1)
    drop = torch.zeros_like(logits, dtype=torch.bool)
    if excluded is not None:
        drop[excluded] = True
    drop[:, padding_idx] = True
    return torch.nn.functional.cross_entropy(logits.masked_fill(drop, float("-inf")), labels)


@pytest.mark.parametrize("n_items, chunk_bytes", [(50, 4 << 20), (1001, 64 * 4 * 16)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("some_inactive", [False, True])
def test_mixture_loss_and_gradients_equal_the_plain_softmax(n_items, chunk_bytes, masked, some_inactive):
    """merge="mixture": an item's logit is log sum_k exp(user_k . e_i) over the active vectors."""
    generator = torch.Generator().manual_seed(n_items + 2 * masked + some_inactive)
    rows, k, d = 16, 3, 8
    user = (3 * torch.randn(rows, k, d, generator=generator, dtype=torch.float64)).requires_grad_()
    table = torch.randn(n_items, d, generator=generator, dtype=torch.float64).requires_grad_()
    labels = torch.randint(1, n_items, (rows,), generator=generator)
    labels[1] = labels[0]
    interest_mask = torch.ones(rows, k, dtype=torch.bool)
    if some_inactive:  # rows with one or two active vectors, as MIND's short histories get
        interest_mask[::2, 2] = False
        interest_mask[::3, 1:] = False
    excluded = None
    if masked:
        pairs = torch.rand(rows, n_items, generator=generator) < 0.3
        pairs[torch.arange(rows), labels] = False
        row_ids, item_ids = pairs.nonzero(as_tuple=True)
        excluded = (torch.cat([row_ids, row_ids[:5]]), torch.cat([item_ids, item_ids[:5]]))
    results = []
    for loss_fn in (mixture_reference,
                    lambda *a: cross_entropy(*a[:4], padding_idx=a[4], chunk_bytes=chunk_bytes, merge="mixture",
                                             interest_mask=a[5])):
        user.grad = table.grad = None
        loss = loss_fn(user, table, labels, excluded, 0, interest_mask)
        (2.5 * loss).backward()
        results.append((loss.detach(), user.grad.clone(), table.grad.clone()))
    for expected, got in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    assert results[1][1][~interest_mask].abs().sum() == 0  # inactive vectors learn nothing
    # one vector a row: the mixture is the plain softmax
    single = user[:, :1].detach()
    torch.testing.assert_close(cross_entropy(single, table.detach(), labels, merge="mixture"),
                               cross_entropy(single[:, 0], table.detach(), labels))


def test_mixture_sampled_softmax_equals_a_row_loop():
    from recbole_mind.model.loss import sampled_softmax

    generator = torch.Generator().manual_seed(3)
    rows, k, d, n_items, m = 6, 3, 5, 40, 12
    user = torch.randn(rows, k, d, generator=generator, dtype=torch.float64)
    table = torch.randn(n_items, d, generator=generator, dtype=torch.float64)
    pos = torch.randint(1, n_items, (rows,), generator=generator)
    negatives = torch.randint(1, n_items, (m,), generator=generator)
    negatives[0] = pos[0]  # a negative equal to its row's label is masked
    log_q = torch.log_softmax(torch.randn(n_items, generator=generator, dtype=torch.float64), 0)
    mask = torch.ones(rows, k, dtype=torch.bool)
    mask[2, 1:] = False
    got = sampled_softmax(user, pos, table[pos], negatives, table[negatives], log_q, merge="mixture",
                          interest_mask=mask)
    losses = []
    for r in range(rows):
        vectors = user[r][mask[r]]
        score = lambda item: torch.logsumexp(vectors @ table[item], 0) - log_q[item]
        logits = [score(pos[r])] + [score(n) for n in negatives if n != pos[r]]
        losses.append(-torch.log_softmax(torch.stack(logits), 0)[0])
    torch.testing.assert_close(got, torch.stack(losses).mean())
