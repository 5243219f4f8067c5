"""B2I routing (recbole_mind/model/layers.py) against a plain per-user loop written from the paper's routing (docs/model.md)."""

import pytest
import torch

from recbole_mind.model.layers import (BEHAVIOURS, INTERESTS, SEEDED, B2IRouting, active_interest_count, squash,
                                       unit_length)

D = 6
L = 7


def spec_active_count(n, k, dynamic=True):
    """K'_u = max(1, min(K, floor(log2 n))), with floor(log2 n) taken from the integer's bit length."""
    return max(1, min(k, n.bit_length() - 1)) if dynamic else k


def spec_squash(z):
    norm_sq = z @ z
    if norm_sq.item() == 0.0:
        return torch.zeros_like(z)
    return norm_sq / (1.0 + norm_sq) * z / torch.sqrt(norm_sq)


def reference_routing(S, behaviours, lengths, active, logits, iterations, axis):
    """Spec section 2 for one user at a time, one behaviour i and one interest j at a time.

    Returns (interests [B, K, d], weights of the last iteration [B, L, K]). The logit update
    uses detached capsules, so gradient flows only through the last iteration's z_j.
    """
    batch, length, k = logits.shape
    all_interests, all_weights = [], []
    for b in range(batch):
        n, k_active = int(lengths[b]), int(active[b])
        caps = [S @ behaviours[b, i] for i in range(n)]  # S e_i of the real behaviours
        caps_const = [c.detach() for c in caps]
        blog = [[logits[b, i, j].detach().clone() for j in range(k)] for i in range(n)]
        for it in range(iterations):
            w = [[torch.zeros((), dtype=S.dtype) for _ in range(k)] for _ in range(length)]
            if axis == INTERESTS:  # each behaviour spreads over the active interests
                for i in range(n):
                    denom = sum(torch.exp(blog[i][j]) for j in range(k_active))
                    for j in range(k_active):
                        w[i][j] = torch.exp(blog[i][j]) / denom
            else:  # each active interest normalises over the real behaviours
                for j in range(k_active):
                    denom = sum(torch.exp(blog[i][j]) for i in range(n))
                    for i in range(n):
                        w[i][j] = torch.exp(blog[i][j]) / denom
            last = it == iterations - 1
            u = []
            for j in range(k):
                if j >= k_active:
                    u.append(torch.zeros(S.shape[0], dtype=S.dtype))
                    continue
                z = sum(w[i][j] * (caps[i] if last else caps_const[i]) for i in range(n))
                u.append(spec_squash(z))
            for i in range(n):
                for j in range(k_active):
                    blog[i][j] = blog[i][j] + u[j].detach() @ caps_const[i]
        all_interests.append(torch.stack(u))
        all_weights.append(torch.stack([torch.stack(row) for row in w]))
    return torch.stack(all_interests), torch.stack(all_weights)


def make_inputs(k, lengths, seed, length=L, dynamic=True):
    generator = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    lengths = torch.tensor(lengths)
    behaviours = torch.randn(batch, length, D, generator=generator, dtype=torch.float64)
    seq_mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    # Padding rows hold noise on purpose: the layer must ignore them through seq_mask.
    active = torch.tensor([spec_active_count(int(n), k, dynamic) for n in lengths])
    interest_mask = torch.arange(k).unsqueeze(0) < active.unsqueeze(1)
    logits = torch.randn(batch, length, k, generator=generator, dtype=torch.float64)
    return behaviours, lengths, seq_mask, active, interest_mask, logits


def make_layer(k, iterations, axis, length=L, seed=0):
    torch.manual_seed(seed)
    return B2IRouting(D, k, length, iterations=iterations, softmax_axis=axis).double()


@pytest.mark.parametrize("axis", [INTERESTS, BEHAVIOURS])
@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("iterations", [1, 3])
@pytest.mark.parametrize("dynamic", [True, False])
def test_vectorised_routing_equals_per_user_loop(axis, k, iterations, dynamic):
    lengths = [1, 2, 3, 4, L, 5]  # 1 and L included; K'_u spans 1..min(K, 2)
    layer = make_layer(k, iterations, axis)
    behaviours, lengths_t, seq_mask, active, interest_mask, logits = make_inputs(
        k, lengths, seed=10 * k + iterations, dynamic=dynamic)
    behaviours.requires_grad_()

    interests, weights = layer(behaviours, seq_mask, interest_mask, logits=logits)

    S = layer.bilinear.weight.detach().clone().requires_grad_()
    behaviours_ref = behaviours.detach().clone().requires_grad_()
    ref_interests, ref_weights = reference_routing(
        S, behaviours_ref, lengths_t, active, logits, iterations, axis)

    assert interests.shape == (len(lengths), k, D)
    assert weights.shape == (len(lengths), L, k)
    torch.testing.assert_close(interests, ref_interests, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-7, atol=1e-12)

    # Gradient: the logits carry none, so only the last iteration's z_j passes it to S and e_i.
    probe = torch.randn(interests.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (interests * probe).sum().backward()
    (ref_interests * probe).sum().backward()
    torch.testing.assert_close(layer.bilinear.weight.grad, S.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(behaviours.grad, behaviours_ref.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("axis", [INTERESTS, BEHAVIOURS])
def test_routing_weights_are_masked_distributions(axis):
    k = 4
    lengths = [1, 3, 4, L]
    layer = make_layer(k, 3, axis)
    behaviours, lengths_t, seq_mask, active, interest_mask, logits = make_inputs(k, lengths, seed=3)
    _, weights = layer(behaviours, seq_mask, interest_mask, logits=logits)
    mask = seq_mask.unsqueeze(-1) & interest_mask.unsqueeze(1)
    assert torch.all(weights[~mask] == 0), "padded behaviours and inactive interests must weigh exactly 0"
    assert torch.all(weights[mask] > 0)
    if axis == INTERESTS:
        sums = weights.sum(dim=-1)  # every real behaviour distributes a total weight of 1
        torch.testing.assert_close(sums[seq_mask], torch.ones_like(sums[seq_mask]))
    else:
        sums = weights.sum(dim=1)  # every active interest collects a total weight of 1
        torch.testing.assert_close(sums[interest_mask], torch.ones_like(sums[interest_mask]))


@pytest.mark.parametrize("axis", [INTERESTS, BEHAVIOURS])
def test_padding_invariance_in_eval(axis):
    """Appending zero padding after position n (a wider tensor) changes neither output."""
    k, short, wide = 4, 5, 12
    layer = make_layer(k, 3, axis, length=wide).eval()
    lengths = [1, 2, 4, short]
    behaviours, _, seq_mask, _, interest_mask, _ = make_inputs(k, lengths, seed=5, length=short)
    padded = torch.cat([behaviours, torch.zeros(len(lengths), wide - short, D, dtype=torch.float64)], dim=1)
    padded_mask = torch.cat([seq_mask, torch.zeros(len(lengths), wide - short, dtype=torch.bool)], dim=1)
    interests_short, weights_short = layer(behaviours, seq_mask, interest_mask)
    interests_wide, weights_wide = layer(padded, padded_mask, interest_mask)
    torch.testing.assert_close(interests_wide, interests_short, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weights_wide[:, :short], weights_short, rtol=1e-12, atol=1e-12)
    assert torch.all(weights_wide[:, short:] == 0)


def test_eval_logits_fixed_and_training_logits_fresh():
    layer = make_layer(4, 3, INTERESTS)
    behaviours, _, seq_mask, _, interest_mask, _ = make_inputs(4, [L, 6, 4], seed=8)
    layer.eval()
    first, _ = layer(behaviours, seq_mask, interest_mask)
    second, _ = layer(behaviours, seq_mask, interest_mask)
    assert torch.equal(first, second)
    # Two users with the same behaviours get the same interests in evaluation.
    same = behaviours[:1].expand(2, -1, -1)
    pair, _ = layer(same, seq_mask[:1].expand(2, -1), interest_mask[:1].expand(2, -1))
    assert torch.equal(pair[0], pair[1])

    layer.train()
    a = layer.initial_logits(3, L, behaviours.device)
    b = layer.initial_logits(3, L, behaviours.device)
    assert a.shape == (3, L, 4) and not torch.equal(a, b)
    train_first, _ = layer(behaviours, seq_mask, interest_mask)
    train_second, _ = layer(behaviours, seq_mask, interest_mask)
    assert not torch.allclose(train_first, train_second)


def test_routing_init_std_scales_training_logits():
    torch.manual_seed(0)
    layer = B2IRouting(D, 4, L, init_std=0.1).train()
    draws = layer.initial_logits(2000, L, torch.device("cpu"))
    assert abs(draws.std().item() - 0.1) < 0.005 and abs(draws.mean().item()) < 0.005


def test_eval_sequence_longer_than_max_length_is_rejected():
    layer = make_layer(2, 3, INTERESTS, length=4).eval()
    behaviours, _, seq_mask, _, interest_mask, _ = make_inputs(2, [5], seed=0, length=5)
    with pytest.raises(ValueError, match="MAX_ITEM_LIST_LENGTH"):
        layer(behaviours, seq_mask, interest_mask)


def test_unknown_softmax_axis_is_rejected():
    with pytest.raises(ValueError, match="routing_softmax_axis"):
        B2IRouting(D, 2, L, softmax_axis="items")


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_active_interest_count_matches_spec(k):
    lengths = torch.arange(1, 130)
    dynamic = active_interest_count(lengths, k, True)
    fixed = active_interest_count(lengths, k, False)
    assert dynamic.tolist() == [spec_active_count(n, k) for n in range(1, 130)]
    assert fixed.tolist() == [k] * len(lengths)


def test_squash_matches_formula_and_maps_zero_to_zero():
    z = torch.randn(5, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3
    expected = torch.stack([spec_squash(row) for row in z])
    torch.testing.assert_close(squash(z), expected, rtol=1e-8, atol=1e-12)
    assert torch.all(squash(z).norm(dim=-1) < 1)
    zero = torch.zeros(2, D, requires_grad=True)
    out = squash(zero)
    out.sum().backward()
    assert torch.equal(out, torch.zeros(2, D)) and torch.isfinite(zero.grad).all()


def reference_seed_positions(S, behaviours, lengths, k):
    """Farthest-point seeds for one user at a time: the most recent behaviour, then each next
    the real behaviour whose largest cosine to the seeds so far is smallest (first on ties)."""
    rows = []
    for b in range(behaviours.size(0)):
        n = int(lengths[b])
        caps = [S @ behaviours[b, i] for i in range(n)]
        cos = [[float(torch.dot(a, c) / (a.norm() * c.norm())) for c in caps] for a in caps]
        seeds = [n - 1]
        while len(seeds) < k:
            closest = [max(cos[i][s] for s in seeds) for i in range(n)]
            seeds.append(min(range(n), key=lambda i: (closest[i], i)))
        rows.append(seeds)
    return torch.tensor(rows)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_seeded_start_equals_per_user_loop(k):
    lengths = [1, 2, 3, 4, L, 5]
    layer = B2IRouting(D, k, L, iterations=3, init=SEEDED).double()
    behaviours, lengths_t, seq_mask, active, interest_mask, _ = make_inputs(k, lengths, seed=20 + k)
    projected = layer.bilinear(behaviours).detach()
    S = layer.bilinear.weight.detach()

    positions = layer.seed_positions(projected, seq_mask, k)
    # the seeds of active interests (K'_u < n always: the rest repeat a seed, ties by rounding)
    assert torch.equal(positions[interest_mask], reference_seed_positions(S, behaviours, lengths_t, k)[interest_mask])

    # The start logits are the seeds' squashed capsules against every behaviour, and the routing
    # from them is the paper's loop started from those logits, in training and serving alike.
    expected = torch.stack([torch.stack([torch.stack([spec_squash(projected[b, positions[b, j]]) @ projected[b, i]
                                                      for j in range(k)]) for i in range(L)])
                            for b in range(len(lengths))])
    torch.testing.assert_close(layer.seeded_logits(projected, seq_mask, interest_mask), expected)
    for mode in (layer.train, layer.eval):
        mode()
        interests, weights = layer(behaviours, seq_mask, interest_mask)
        ref_interests, ref_weights = reference_routing(S, behaviours, lengths_t, active, expected, 3, INTERESTS)
        torch.testing.assert_close(interests, ref_interests, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(weights, ref_weights, rtol=1e-7, atol=1e-12)


def test_seeded_routing_separates_planted_clusters_where_random_starts_do_not():
    """Two interleaved tastes (A B A B ...) with S = I: seeded routing puts every behaviour with
    its own cluster with > 0.9 of its weight; the random start with sigma 0.1 starts the two
    interests alike and three iterations separate them only softly (0.55-0.65 here)."""
    generator = torch.Generator().manual_seed(0)
    n, k = 8, 2
    centres = torch.zeros(2, D, dtype=torch.float64)
    centres[0, 0] = centres[1, 1] = 3.0
    cluster = torch.arange(n) % 2
    behaviours = (centres[cluster] + 0.3 * torch.randn(n, D, generator=generator, dtype=torch.float64)).unsqueeze(0)
    seq_mask = torch.ones(1, n, dtype=torch.bool)
    interest_mask = torch.ones(1, k, dtype=torch.bool)
    results = {}
    for init in ("random", SEEDED):
        layer = B2IRouting(D, k, n, iterations=3, init_std=0.1, init=init).double().eval()
        with torch.no_grad():
            layer.bilinear.weight.copy_(torch.eye(D, dtype=torch.float64))
        _, weights = layer(behaviours, seq_mask, interest_mask)
        results[init] = weights[0]
    seeded = results[SEEDED].argmax(dim=1)
    assert torch.equal(seeded, cluster) or torch.equal(seeded, 1 - cluster)
    assert results[SEEDED].max(dim=1).values.min() > 0.9
    assert results["random"].max(dim=1).values.max() < 0.7


def test_unknown_routing_init_is_rejected():
    with pytest.raises(ValueError, match="routing_init"):
        B2IRouting(D, 2, L, init="kmeans")


def test_unit_length_equals_normalize_in_value_and_gradient():
    """unit_length's own backward against autograd through nn.functional.normalize, with a zero
    row (an inactive interest: its norm is clamped to eps) among the rows."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, D, generator=generator, dtype=torch.float64)
    x[1, 2] = 0.0
    upstream = torch.randn(5, 3, D, generator=generator, dtype=torch.float64)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = unit_length(ours)
    assert torch.equal(y, torch.nn.functional.normalize(x, dim=-1))
    y.backward(upstream)
    torch.nn.functional.normalize(theirs, dim=-1).backward(upstream)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-12, atol=0.0)
    assert torch.autograd.gradcheck(unit_length, (torch.randn(4, D, dtype=torch.float64, requires_grad=True),))
