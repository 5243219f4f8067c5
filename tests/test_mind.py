"""Properties of the MIND model (recbole_mind/model/mind.py) that the paper's semantics require (docs/model.md)."""

import math

import pytest
import torch
import yaml
from recbole.data.interaction import Interaction
from recbole.utils import init_seed

from recbole_mind import properties
from recbole_mind.model import MIND
from recbole_mind.model.scoring import max_interest_scores
from recbole_mind.config import build_config
from recbole_mind.errors import UserError
from recbole_mind.data import prepare_data
from recbole_mind.model.layers import BEHAVIOURS, INTERESTS, LabelAwareAttention, active_interest_count

L = 10  # MAX_ITEM_LIST_LENGTH of the tiny config
FEATURES = {"user_features": ["age", "gender"], "item_features": ["genre", "year"]}
BPR = {"loss_type": "BPR", "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}}


# The paper's model (every behaviour routed, ranking over all items), at the defaults' routing
# start and attention so that the tests below isolate one key at a time.
SPEC = {k: v for k, v in yaml.safe_load(properties.MIND_PAPER.read_text()).items()
        if k not in ("routing_init_std", "attention_power")}


def build(tiny_config, **overrides):
    """(model, train_data) on the tiny dataset; the model starts in eval mode. The paper's
    semantics (no history exclusion) unless ``overrides`` say otherwise."""
    config = build_config("MIND", "tiny", config_dict=tiny_config | SPEC | overrides)
    init_seed(config["seed"], True)
    _, train_data, _, _ = prepare_data(config)
    model = MIND(config, train_data._dataset)
    return model.eval(), train_data


def spec_active_count(n, k, dynamic=True):
    return max(1, min(k, n.bit_length() - 1)) if dynamic else k


def sequences(model, lengths, width=L, seed=0):
    """An evaluation batch: one row per length, real item ids right-padded with 0 to ``width``."""
    generator = torch.Generator().manual_seed(seed)
    rows = len(lengths)
    item_seq = torch.zeros(rows, width, dtype=torch.long)
    for r, n in enumerate(lengths):
        item_seq[r, :n] = torch.randint(1, model.n_items, (n,), generator=generator)
    return Interaction({
        model.ITEM_SEQ: item_seq,
        model.ITEM_SEQ_LEN: torch.tensor(lengths),
        model.USER_ID: torch.arange(1, rows + 1),
        model.ITEM_ID: torch.randint(1, model.n_items, (rows,), generator=generator),
    })


def naive_max_scores(interests, active, items):
    """score[b, i] = max over the first active[b] interests of v_b^j . e_i, one row at a time."""
    rows = []
    for b in range(interests.size(0)):
        per_interest = interests[b, :int(active[b])] @ items.t()  # [K'_b, N]
        rows.append(per_interest.max(dim=0).values)
    return torch.stack(rows)


# --------------------------------------------------------------------------- serving


@pytest.mark.parametrize("axis", [INTERESTS, BEHAVIOURS])
def test_full_sort_predict_is_padding_invariant(tiny_config, axis):
    model, _ = build(tiny_config, routing_softmax_axis=axis, **FEATURES)
    lengths = [1, 2, 3, 4, 6]
    short = sequences(model, lengths, width=6)
    wide = sequences(model, lengths, width=L)
    assert torch.equal(wide[model.ITEM_SEQ][:, :6], short[model.ITEM_SEQ])
    with torch.no_grad():
        torch.testing.assert_close(model.full_sort_predict(wide), model.full_sort_predict(short),
                                   rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(model.predict(wide), model.predict(short), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k, dynamic", [(4, True), (2, True), (1, True), (4, False)])
def test_exactly_k_prime_interests_are_active(tiny_config, k, dynamic):
    # With a user profile the tower sees (0, p_u) for an inactive capsule: not zero unless masked.
    model, _ = build(tiny_config, interest_num=k, dynamic_interest=dynamic, **FEATURES)
    lengths = list(range(1, L + 1))
    batch = sequences(model, lengths)
    with torch.no_grad():
        interests, mask, weights, _ = model.routing_details(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN],
                                                            batch[model.USER_ID])
    expected = [spec_active_count(n, k, dynamic) for n in lengths]
    assert mask.sum(dim=1).tolist() == expected
    for row, active in enumerate(expected):
        assert mask[row, :active].all()
        assert torch.all(interests[row, active:] == 0), "inactive interests must be zero vectors"
        assert torch.all(weights[row, :, active:] == 0), "inactive interests must get no routing weight"
        assert torch.all(interests[row, :active].norm(dim=-1) > 0)


def test_inactive_interests_never_win_the_max(tiny_config):
    model, _ = build(tiny_config)
    batch = sequences(model, [2, 3, 5, L])  # K' = 1, 1, 2, 3
    items = model.item_vectors().detach()
    with torch.no_grad():
        interests, mask = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
        scores = model.full_sort_predict(batch)
    assert not mask.all()
    # An inactive interest scores 0 against every item; it must not beat negative active scores.
    unmasked_max = (interests @ items.t()).max(dim=1).values
    assert not torch.allclose(unmasked_max, scores), "test data should have rows with all-negative scores"
    huge = interests.clone()
    huge[~mask] = 1e6 * torch.randn(int((~mask).sum()), interests.size(-1))
    torch.testing.assert_close(max_interest_scores(huge, mask, items), scores)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_full_sort_predict_equals_naive_max_and_predict(tiny_config, k):
    model, _ = build(tiny_config, interest_num=k, **FEATURES)
    lengths = [1, 2, 3, 4, 5, 7, 8, L]
    batch = sequences(model, lengths)
    with torch.no_grad():
        interests, mask = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN], batch[model.USER_ID])
        scores = model.full_sort_predict(batch)
        given = model.predict(batch)
        items = model.item_vectors()
    assert scores.shape == (len(lengths), model.n_items)
    active = [spec_active_count(n, k) for n in lengths]
    torch.testing.assert_close(scores, naive_max_scores(interests, active, items), rtol=1e-5, atol=1e-6)
    picked = scores[torch.arange(len(lengths)), batch[model.ITEM_ID]]
    torch.testing.assert_close(given, picked, rtol=1e-5, atol=1e-6)
    if k == 1:  # a single-vector model: the max is that vector's score
        torch.testing.assert_close(scores, interests[:, 0] @ items.t(), rtol=1e-5, atol=1e-6)


def test_evaluation_is_deterministic_and_training_is_not(tiny_config):
    model, _ = build(tiny_config, **FEATURES)
    batch = sequences(model, [1, 3, 6, L])
    with torch.no_grad():
        first = model.full_sort_predict(batch)
        torch.manual_seed(123)  # the global RNG must not matter in evaluation
        second = model.full_sort_predict(batch)
        model.train()
        train_a, _ = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN], batch[model.USER_ID])
        train_b, _ = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN], batch[model.USER_ID])
    assert torch.equal(first, second)
    # n = 1 has one interest and one behaviour: routing has nothing to decide for it.
    assert not torch.allclose(train_a[1:], train_b[1:]), "training must draw fresh routing logits"
    torch.testing.assert_close(train_a[0], train_b[0])


# --------------------------------------------------------------------------- label-aware attention


def attention_inputs(seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    interests = torch.randn(5, 4, 8, generator=generator) * scale
    label = torch.randn(5, 8, generator=generator) * scale
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    return interests * mask.unsqueeze(-1), label, mask


@pytest.mark.parametrize("power", [1.0, 2.0, 50.0, math.inf])
@pytest.mark.parametrize("scale", [0.1, 1.0, 30.0, 1000.0])
def test_label_aware_attention_is_finite_with_finite_gradients(power, scale):
    interests, label, mask = attention_inputs(seed=int(scale), scale=scale)
    interests.requires_grad_()
    label.requires_grad_()
    scores = torch.einsum("bkd,bd->bk", interests, label)
    assert (scores[mask] < 0).any() and scores.abs().max() > 1 or scale < 1
    out = LabelAwareAttention(power)(interests, label, mask)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(interests.grad).all()
    assert label.grad is None or torch.isfinite(label.grad).all()


@pytest.mark.parametrize("power", [2.0, 50.0])
@pytest.mark.parametrize("score", [3.0, 40.0, -40.0])
def test_label_aware_attention_gradients_stay_finite_at_ties(power, score):
    # Two different interests with exactly the same (large) score: |s|^p has a huge slope there.
    interests = torch.tensor([[[score, 0.0, 0.0], [0.0, score, 0.0]]], requires_grad=True)
    label = torch.tensor([[1.0, 1.0, 0.5]], requires_grad=True)
    out = LabelAwareAttention(power)(interests, label, torch.ones(1, 2, dtype=torch.bool))
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(out, interests.detach().mean(dim=1))
    assert torch.isfinite(interests.grad).all() and torch.isfinite(label.grad).all()


def test_label_aware_attention_p1_is_softmax_of_raw_scores():
    interests, label, mask = attention_inputs(seed=3, scale=2.0)
    scores = torch.einsum("bkd,bd->bk", interests, label)
    weights = torch.softmax(scores.masked_fill(~mask, -math.inf), dim=-1)
    expected = torch.einsum("bk,bkd->bd", weights, interests)
    torch.testing.assert_close(LabelAwareAttention(1.0)(interests, label, mask), expected)


def test_label_aware_attention_p2_uses_sign_preserving_power():
    interests, label, mask = attention_inputs(seed=4)
    scores = torch.einsum("bkd,bd->bk", interests, label)
    powered = torch.sign(scores) * scores.abs() ** 2
    weights = torch.softmax(powered.masked_fill(~mask, -math.inf), dim=-1)
    expected = torch.einsum("bk,bkd->bd", weights, interests)
    torch.testing.assert_close(LabelAwareAttention(2.0)(interests, label, mask), expected)


def test_label_aware_attention_pinf_picks_the_best_active_interest():
    interests, label, mask = attention_inputs(seed=5, scale=3.0)
    # Make an inactive interest the best match by far: it must still not be chosen.
    interests[1, 3] = 100.0 * label[1]
    scores = torch.einsum("bkd,bd->bk", interests, label)
    out = LabelAwareAttention(math.inf)(interests, label, mask)
    for b in range(interests.size(0)):
        active = int(mask[b].sum())
        best = max(range(active), key=lambda j: scores[b, j].item())
        assert torch.equal(out[b], interests[b, best])


# --------------------------------------------------------------------------- training


def fixed_batch(train_data):
    return next(iter(train_data))


@pytest.mark.parametrize("loss, features", [
    ("CE", False), ("SSM", False), ("BPR", False), ("CE", True), ("SSM", True), ("BPR", True)])
def test_each_loss_goes_down_on_a_fixed_batch(tiny_config, loss, features):
    overrides = dict(BPR) if loss == "BPR" else {"loss_type": loss}
    if loss == "SSM":
        overrides["num_negatives"] = 8
    if features:
        overrides.update(FEATURES)
    model, train_data = build(tiny_config, **overrides)
    batch = fixed_batch(train_data)
    if loss == "BPR":
        assert model.NEG_ITEM_ID in batch
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)

    def loss_at(seed):  # same routing logits and negatives before and after training
        torch.manual_seed(seed)
        return model.calculate_loss(batch)

    with torch.no_grad():
        before = loss_at(99).item()
    for step in range(20):
        optimiser.zero_grad()
        value = model.calculate_loss(batch)
        assert torch.isfinite(value)
        value.backward()
        optimiser.step()
    with torch.no_grad():
        after = loss_at(99).item()
    assert math.isfinite(before) and after < 0.9 * before, (before, after)


def hand_ssm_loss(model, batch, seed, log_q, correct=True, mask_hits=True, merged=False):
    """The sampled softmax of one batch, row by row, replaying the model's random draws.
    ``merged``: an item's score is its best over the row's active interests."""
    torch.manual_seed(seed)
    interests, mask = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
    negatives = torch.multinomial(model.sampling_log_prob.exp(), model.num_negatives, replacement=True)
    labels = batch[model.POS_ITEM_ID]
    items = model.item_vectors()
    user = model.attention(interests, items[labels], mask) / model.temperature
    losses, hits = [], 0
    for b in range(len(labels)):
        def score(item):
            if merged:
                return (interests[b][mask[b]] @ items[item]).max() / model.temperature
            return user[b] @ items[item]

        pos = int(labels[b])
        logits = [score(pos) - (log_q[pos] if correct else 0.0)]
        for neg in negatives.tolist():
            if neg == pos:
                hits += 1
                if mask_hits:
                    continue
            logits.append(score(neg) - (log_q[neg] if correct else 0.0))
        logits = torch.stack(logits)
        losses.append(torch.logsumexp(logits, dim=0) - logits[0])
    return torch.stack(losses).mean(), negatives, hits


def test_sampled_softmax_masks_hits_and_applies_log_q(tiny_config):
    model, train_data = build(tiny_config, loss_type="SSM", num_negatives=30, temperature=0.5,
                              sampling_distribution="popularity", sampling_alpha=0.75)
    dataset = train_data._dataset
    counts = torch.bincount(dataset.inter_feat[dataset.iid_field].long(), minlength=model.n_items).double()
    proposal = (counts + 1.0) ** 0.75  # popularity^alpha, +1 so unseen items stay drawable
    proposal[0] = 0.0  # the padding item is never drawn
    log_q = torch.log(proposal / proposal.sum())
    torch.testing.assert_close(model.sampling_log_prob.double(), log_q, rtol=1e-5, atol=1e-6)
    assert log_q[1:].std() > 0.05, "popularity must make log Q non-constant, or log-Q would cancel"

    batch = fixed_batch(train_data)
    model.train()
    with torch.no_grad():
        torch.manual_seed(5)
        loss = model.calculate_loss(batch)
        expected, negatives, hits = hand_ssm_loss(model, batch, 5, log_q.float())
        no_correction, _, _ = hand_ssm_loss(model, batch, 5, log_q.float(), correct=False)
        no_masking, _, _ = hand_ssm_loss(model, batch, 5, log_q.float(), mask_hits=False)
    assert hits > 0, "the draw should contain accidental hits for the test to mean anything"
    assert (negatives > 0).all()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert not torch.isclose(loss, no_correction, rtol=1e-4), "log-Q correction must be applied"
    assert not torch.isclose(loss, no_masking, rtol=1e-4), "accidental hits must be masked"


def test_merged_sampled_softmax_scores_each_item_by_its_best_interest(tiny_config):
    model, train_data = build(tiny_config, loss_type="SSM", num_negatives=30, temperature=0.5,
                              training_scores="merged")  # the paper's dynamic K'_u: rows with 1-3 interests
    batch = fixed_batch(train_data)
    assert len(set(model.interest_mask(batch[model.ITEM_SEQ_LEN]).sum(dim=1).tolist())) > 1
    model.train()
    with torch.no_grad():
        torch.manual_seed(5)
        loss = model.calculate_loss(batch)
        expected, _, _ = hand_ssm_loss(model, batch, 5, model.sampling_log_prob, merged=True)
        label_aware, _, _ = hand_ssm_loss(model, batch, 5, model.sampling_log_prob)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert not torch.isclose(loss, label_aware, rtol=1e-4), "negatives must meet every interest's score"


def test_sampled_softmax_ignores_a_negative_equal_to_the_label(tiny_config):
    """With every negative equal to the label, the only logit is the label's: the loss is 0."""
    model, train_data = build(tiny_config, loss_type="SSM", num_negatives=3)
    model.train()
    batch = fixed_batch(train_data)
    labels = batch[model.POS_ITEM_ID]
    single = Interaction({key: batch[key][:1].repeat(*([4] + [1] * (batch[key].dim() - 1)))
                          for key in batch.interaction})
    # A one-hot proposal on the label: every draw is an accidental hit.
    log_prob = torch.full_like(model.sampling_log_prob, -math.inf)
    log_prob[labels[0]] = 0.0
    model.sampling_log_prob = log_prob
    loss = model.calculate_loss(single)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- exclude_history


def test_exclude_history_masks_exactly_the_behaviours_when_serving(tiny_config):
    plain, _ = build(tiny_config)
    excluding, _ = build(tiny_config, exclude_history=True)
    excluding.load_state_dict(plain.state_dict())
    batch = sequences(plain, [1, 3, 5, L])
    with torch.no_grad():
        base = plain.full_sort_predict(batch)
        scores = excluding.full_sort_predict(batch)
        given = excluding.predict(batch)
    for b, row in enumerate(batch[plain.ITEM_SEQ]):
        seen = set(row[row > 0].tolist())
        for item in range(1, plain.n_items):
            if item in seen:
                assert scores[b, item] == float("-inf")
            else:
                assert scores[b, item] == base[b, item]
    picked = scores[torch.arange(4), batch[plain.ITEM_ID]]
    torch.testing.assert_close(given, picked)
    # a label inside the history: predict agrees with full_sort_predict there too
    batch[plain.ITEM_ID] = batch[plain.ITEM_SEQ][:, 0]
    with torch.no_grad():
        assert (excluding.predict(batch) == float("-inf")).all()


def hand_ce_loss(model, batch, seed, exclude, merged=False):
    """The exact softmax, row by row: history items (but not the label) leave the denominator.
    ``merged``: an item's logit is its best score over the row's active interests ("mixture": the
    log of their summed exponentiated scores)."""
    torch.manual_seed(seed)
    profile = batch[model.USER_ID] if model.user_profile is not None else None
    interests, mask = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN], profile)
    labels = batch[model.POS_ITEM_ID]
    items = model.item_vectors()
    user = model.attention(interests, items[labels], mask) / model.temperature
    losses = []
    for b in range(len(labels)):
        history = set(batch[model.ITEM_SEQ][b].tolist()) if exclude else set()
        kept = [i for i in range(1, model.n_items) if i not in history or i == int(labels[b])]
        if merged == "mixture":
            logits = torch.logsumexp(interests[b][mask[b]] @ items[kept].t() / model.temperature, dim=0)
        elif merged:
            logits = (interests[b][mask[b]] @ items[kept].t()).max(dim=0).values / model.temperature
        else:
            logits = user[b] @ items[kept].t()
        losses.append(torch.logsumexp(logits, 0) - logits[kept.index(int(labels[b]))])
    return torch.stack(losses).mean()


def test_exclude_history_leaves_behaviours_out_of_the_training_softmax(tiny_config):
    model, train_data = build(tiny_config, exclude_history=True)
    model.train()
    batch = fixed_batch(train_data)
    # make one label repeat a behaviour of its row: it must stay in the softmax as the target
    batch[model.POS_ITEM_ID][0] = batch[model.ITEM_SEQ][0, 0]
    with torch.no_grad():
        torch.manual_seed(3)
        loss = model.calculate_loss(batch)
        expected = hand_ce_loss(model, batch, 3, exclude=True)
        full = hand_ce_loss(model, batch, 3, exclude=False)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert not torch.isclose(loss, full, rtol=1e-4), "history items must leave the softmax"


@pytest.mark.parametrize("features", [False, True])
def test_normalize_vectors_scores_cosines_divided_by_the_temperature(tiny_config, features):
    overrides = dict(FEATURES) if features else {}
    model, train_data = build(tiny_config, normalize_vectors=True, temperature=0.1, interest_num=3,
                              softmax_dtype="float32", **overrides)
    plain, _ = build(tiny_config, interest_num=3, softmax_dtype="float32", **overrides)
    plain.load_state_dict(model.state_dict())  # the same weights, without the normalisation
    lengths = [1, 3, 5, L]
    serving = sequences(model, lengths)
    seq, seq_len, user = serving[model.ITEM_SEQ], serving[model.ITEM_SEQ_LEN], serving[model.USER_ID]
    with torch.no_grad():
        items = model.item_vectors()
        raw_items = plain.item_vectors()
        interests, mask = model.forward(seq, seq_len, user)
        scores = model.full_sort_predict(serving)
    unit = raw_items / raw_items.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(items[1:], unit[1:], rtol=1e-5, atol=1e-6)
    norms = interests.norm(dim=-1)
    torch.testing.assert_close(norms[mask], torch.ones(int(mask.sum())), rtol=1e-5, atol=1e-6)
    assert bool((norms[~mask] == 0).all())
    assert float(scores.max()) <= 1.0 + 1e-5  # cosines: serving ranks without the temperature
    torch.testing.assert_close(scores, naive_max_scores(interests, mask.sum(1), items), rtol=1e-5, atol=1e-6)
    model.train()
    batch = fixed_batch(train_data)
    with torch.no_grad():
        torch.manual_seed(3)
        loss = model.calculate_loss(batch)
        expected = hand_ce_loss(model, batch, 3, exclude=False)  # divides by the temperature
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_exclude_history_masks_sampled_negatives_in_the_history(tiny_config):
    model, train_data = build(tiny_config, exclude_history=True, loss_type="SSM", num_negatives=20)
    model.train()
    batch = fixed_batch(train_data)
    row = Interaction({key: batch[key][:1] for key in batch.interaction})
    behaviour = int(row[model.ITEM_SEQ][0, 0])
    assert behaviour != int(row[model.POS_ITEM_ID][0])
    # a proposal on a behaviour of the row and its label: every negative is in its history or
    # an accidental hit, so only the label's logit is left
    log_prob = torch.full_like(model.sampling_log_prob, -math.inf)
    log_prob[behaviour] = log_prob[row[model.POS_ITEM_ID][0]] = math.log(0.5)
    model.sampling_log_prob = log_prob
    loss = model.calculate_loss(row)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)


def test_table_projection_equals_projecting_each_behaviour(tiny_config):
    """forward gathers S e_i from S applied to the item table when n_items <= B x L: the same
    interests and gradients as applying S to every behaviour (the path of small batches)."""
    model, _ = build(tiny_config, **FEATURES)
    model.train()
    batch = sequences(model, [1, 2, 5, 8, L, L, L, L])
    item_seq, item_seq_len = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    assert model.n_items <= item_seq.numel(), "the batch must take the table path"
    logits = torch.randn(item_seq.size(0), L, model.interest_num)

    def interests_and_grads(via_table):
        model.zero_grad()
        seq_mask, interest_mask = item_seq > 0, model.interest_mask(item_seq_len)
        if via_table:
            projected = torch.nn.functional.embedding(item_seq, model.routing.bilinear(model.item_vectors()))
            capsules, _ = model.routing.route(projected, seq_mask, interest_mask, logits)
        else:
            capsules, _ = model.routing(model.item_vectors(item_seq), seq_mask, interest_mask, logits)
        capsules.square().sum().backward()
        return capsules.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    table_out, table_grads = interests_and_grads(True)
    plain_out, plain_grads = interests_and_grads(False)
    torch.testing.assert_close(table_out, plain_out, rtol=1e-5, atol=1e-6)
    assert len(table_grads) == len(plain_grads) > 0
    for a, b in zip(table_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # and forward takes that path by itself in both cases
    model.eval()
    with torch.no_grad():
        whole, _ = model.forward(item_seq, item_seq_len, batch[model.USER_ID])
        rows = [model.forward(item_seq[i:i + 1], item_seq_len[i:i + 1], batch[model.USER_ID][i:i + 1])[0]
                for i in range(item_seq.size(0))]  # 1 x L < n_items: per behaviour
    torch.testing.assert_close(whole, torch.cat(rows), rtol=1e-5, atol=1e-6)
    # in training a caller's table (the loss has one) does not force the whole-table projection
    calls = []
    handle = model.routing.bilinear.register_forward_hook(lambda m, args, out: calls.append(args[0].size(0)))
    model.train()
    model.forward(item_seq[:1], item_seq_len[:1], batch[model.USER_ID][:1], table=model.item_vectors())
    model.eval()
    model.forward(item_seq[:1], item_seq_len[:1], batch[model.USER_ID][:1], table=model.item_vectors())
    handle.remove()
    assert calls == [1, model.n_items], calls  # S on the row's behaviours, then on the table


@pytest.mark.parametrize("block_rows, block_items", [(5, 7), (256, 1024)])
@pytest.mark.parametrize("varying", [True, False])
def test_max_interest_scores_tiled_equals_the_naive_max(block_rows, block_items, varying):
    """The serving max in tiles of users x items (5 x 7 divides neither the 33 rows nor the 40
    items), with a varying number of active interests (rows sorted by it) and with K for every
    row, against a row-by-row max; and a mask that is not a prefix, or leaves a row with no
    interest, means the same as the plain masked max."""
    generator = torch.Generator().manual_seed(block_rows)
    interests = torch.randn(33, 4, 6, generator=generator, dtype=torch.float64)
    items = torch.randn(40, 6, generator=generator, dtype=torch.float64)
    active = torch.randint(1, 5, (33,), generator=generator) if varying else torch.full((33,), 4)
    mask = torch.arange(4).unsqueeze(0) < active.unsqueeze(1)
    tiles = {"block_rows": block_rows, "block_items": block_items}
    scores = max_interest_scores(interests, mask, items, **tiles)
    torch.testing.assert_close(scores, naive_max_scores(interests, active, items))
    scattered = mask.flip(1)  # active interests last: not a prefix
    expected = torch.stack([(interests[b, scattered[b]] @ items.t()).amax(0) for b in range(33)])
    torch.testing.assert_close(max_interest_scores(interests, scattered, items, **tiles), expected)
    empty_row = mask.clone()
    empty_row[3] = False
    expected[:] = torch.stack([(interests[b, mask[b]] @ items.t()).amax(0) for b in range(33)])
    expected[3] = float("-inf")
    torch.testing.assert_close(max_interest_scores(interests, empty_row, items, **tiles), expected)
    assert max_interest_scores(interests[:0], mask[:0], items, **tiles).shape == (0, 40)


def test_behaviour_window_routes_only_the_last_behaviours(tiny_config):
    """With behaviour_window w, the interests ignore everything before a row's last w
    behaviours (replacing those items changes nothing), K'_u follows min(n, w), and a window
    at least as long as every sequence is the paper's model."""
    window = 4
    model, _ = build(tiny_config, behaviour_window=window)
    full, _ = build(tiny_config)
    full.load_state_dict(model.state_dict())
    batch = sequences(model, [1, 3, 4, 7, L])
    seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    other = seq.clone()
    for row, n in enumerate(lengths.tolist()):
        older = max(n - window, 0)
        other[row, :older] = (seq[row, :older] % (model.n_items - 1)) + 1  # different, still real items
    assert not torch.equal(other, seq)
    with torch.no_grad():
        interests, mask = model(seq, lengths)
        interests_other, _ = model(other, lengths)
        spec_interests, spec_mask = full(seq, lengths)
    torch.testing.assert_close(interests_other, interests)
    assert torch.equal(mask.sum(1), active_interest_count(lengths.clamp(max=window), model.interest_num, True))
    assert not torch.allclose(interests[-1], spec_interests[-1])  # the long row did change
    model.behaviour_window = L
    with torch.no_grad():
        torch.testing.assert_close(model(seq, lengths)[0], spec_interests)


@pytest.mark.parametrize("training", [False, True])
def test_behaviour_window_gathered_equals_routing_the_masked_sequence(tiny_config, training):
    """For speed the window's behaviours are gathered into a [B, w] sequence before routing; that
    must equal routing the whole sequence with everything before the window masked, each
    behaviour starting from its own position's logit (the fixed draw in evaluation, the same
    random draw in training), and the routing weights must come back per input position."""
    window = 4
    model, _ = build(tiny_config, behaviour_window=window, recency_gain=True, routing_iterations=2)
    with torch.no_grad():
        model.recency_log_gain.copy_(torch.linspace(1.0, -2.0, L))
    batch = sequences(model, [1, 3, 4, 7, L])
    seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    model.train(training)
    with torch.no_grad():
        torch.manual_seed(7)
        interests, mask, weights, _ = model.routing_details(seq, lengths)
        torch.manual_seed(7)
        logits = model.routing.initial_logits(seq.size(0), L, seq.device)
        recency = (lengths.unsqueeze(1) - 1 - torch.arange(L)).clamp(min=0)
        routed = (seq > 0) & (recency < window)
        projected = model.routing.bilinear(model.item_vectors(seq)) * model.recency_log_gain.exp()[recency].unsqueeze(-1)
        capsules, expected_weights = model.routing.route(projected, routed, mask, logits)
    torch.testing.assert_close(interests, model.interest_tower(capsules) * mask.unsqueeze(-1))
    torch.testing.assert_close(weights, expected_weights)
    assert bool(weights[-1, : L - window].eq(0).all()) and bool(weights[-1, L - window:].gt(0).any())


def test_recency_gain_scales_each_behaviour_capsule_by_its_recency(tiny_config):
    """recency_gain: behaviour capsule g_t S e_i with t the distance from the row's last
    behaviour, checked against routing the scaled capsules by hand (a per-row loop); at its
    initial gains of 1 it is the paper's model, and padding after n still changes nothing."""
    model, _ = build(tiny_config, recency_gain=True, routing_iterations=2)
    plain, _ = build(tiny_config, routing_iterations=2)
    state = {k: v for k, v in model.state_dict().items() if k != "recency_log_gain"}
    plain.load_state_dict(state)
    batch = sequences(model, [1, 2, 5, 9, L])
    seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    model.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(seq, lengths)[0], plain(seq, lengths)[0])  # gains 1
        model.recency_log_gain.copy_(torch.linspace(1.0, -2.0, L))
        interests, mask = model(seq, lengths)
        for row, n in enumerate(lengths.tolist()):
            projected = model.routing.bilinear(model.item_vectors(seq[row:row + 1]))
            gains = torch.zeros(L)
            gains[:n] = model.recency_log_gain[:n].flip(0).exp()  # position n-1 has recency 0
            expected, _ = model.routing.route(projected * gains.view(1, L, 1), seq[row:row + 1] > 0,
                                              mask[row:row + 1])
            torch.testing.assert_close(interests[row:row + 1],
                                       model.interest_tower(expected) * mask[row:row + 1].unsqueeze(-1))
        assert not torch.allclose(interests, plain(seq, lengths)[0])
        narrow = sequences(model, [1, 2, 5, 9], width=L - 1)  # the same rows, one padding less
        wide = sequences(model, [1, 2, 5, 9], width=L)
        torch.testing.assert_close(model(wide[model.ITEM_SEQ], wide[model.ITEM_SEQ_LEN])[0],
                                   model(narrow[model.ITEM_SEQ], narrow[model.ITEM_SEQ_LEN])[0])



@pytest.mark.parametrize("window, gain", [(0, False), (4, True)])
def test_interest_residual_adds_the_routing_weighted_item_vectors(tiny_config, window, gain):
    """interest_residual: v_j = H(u_j) + sum_i c_ij g_t(i) e_i / sum_i c_ij over the routed
    behaviours (g: the recency gains when on, t: distance from the row's last behaviour),
    checked against a loop over rows, interests and behaviours with the routing's own weights;
    inactive interests stay zero; training (CE, the item table passed in) computes the same."""
    model, _ = build(tiny_config, interest_residual=True, behaviour_window=window, recency_gain=gain,
                     exclude_history=True, dynamic_interest=not gain)  # the paper's K'_u: some inactive
    lengths = [1, 2, 5, 9, L]
    batch = sequences(model, lengths)
    seq, seq_len = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    with torch.no_grad():
        if gain:
            model.recency_log_gain.copy_(torch.linspace(1.0, -2.0, L))
        interests, mask, weights, capsules = model.routing_details(seq, seq_len)
        towered = model.interest_tower(capsules)
        for row, n in enumerate(lengths):
            for j in range(model.interest_num):
                mixed, mass = torch.zeros(model.embedding_size), 0.0
                for position in range(n):
                    c = float(weights[row, position, j])
                    g = float(model.recency_log_gain[n - 1 - position].exp()) if gain else 1.0
                    mixed += c * g * model.item_vectors(seq[row, position:position + 1])[0]
                    mass += c
                expected = (towered[row, j] + mixed / max(mass, 1e-9)) * mask[row, j]
                torch.testing.assert_close(interests[row, j], expected)
        assert bool((interests[~mask] == 0).all()) and (gain or not bool(mask.all()))
        with_table, _ = model(seq, seq_len, table=model.item_vectors())
        torch.testing.assert_close(with_table, interests)



def test_attention_sampling_draws_interests_by_their_softmax_in_training_only():
    interests = torch.eye(3).unsqueeze(0).expand(4000, -1, -1).contiguous()  # interest j = e_j
    label = torch.tensor([[0.3, 0.1, -0.2]]).expand(4000, -1)
    mask = torch.tensor([[True, True, False]]).expand(4000, -1)  # the third is inactive
    attention = LabelAwareAttention(math.inf, sample_temperature=0.1)
    torch.manual_seed(0)
    picked = attention(interests, label, mask).argmax(dim=1)
    expected = torch.softmax(torch.tensor([0.3, 0.1]) / 0.1, dim=0)
    share = torch.bincount(picked, minlength=3).float() / len(picked)
    assert share[2] == 0 and abs(share[0] - expected[0]) < 0.03
    attention.eval()
    assert torch.equal(attention(interests, label, mask).argmax(dim=1), torch.zeros(4000, dtype=torch.long))


@pytest.mark.parametrize("features", [False, True])
def test_sparse_table_lookups_give_the_dense_lookups_gradients(tiny_config, features):
    """The training step looks behaviours and labels up in the computed item table with a sparse
    gradient (MIND.table_rows): every parameter's gradient equals that of dense lookups."""
    model, train_data = build(tiny_config, **(FEATURES if features else {}), exclude_history=True,
                              normalize_vectors=True)
    batch = fixed_batch(train_data)
    model.train()

    def gradients():
        model.zero_grad()
        torch.manual_seed(7)  # the same routing draw both times
        model.calculate_loss(batch).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    sparse_lookups = []
    original = model.table_rows
    model.table_rows = lambda table, items: sparse_lookups.append(table.grad_fn is not None) or original(table, items)
    sparse = gradients()
    model.table_rows = lambda table, items: torch.nn.functional.embedding(items, table)
    dense = gradients()
    assert sparse_lookups and all(sparse_lookups)
    assert sparse.keys() == dense.keys() and "item_embedding.weight" in sparse
    for name in sparse:
        assert not sparse[name].is_sparse
        torch.testing.assert_close(sparse[name], dense[name], rtol=1e-5, atol=1e-7, msg=name)


def test_interest_diversity_adds_the_mean_pairwise_cosine_of_the_active_interests(tiny_config):
    weight = 0.7
    model, train_data = build(tiny_config, interest_diversity=weight, routing_gradient=True,
                              exclude_history=False)  # the paper's dynamic K'_u: rows with one interest
    model.train()
    batch = fixed_batch(train_data)
    with torch.no_grad():
        torch.manual_seed(5)
        loss = model.calculate_loss(batch)
        ce = hand_ce_loss(model, batch, 5, exclude=False)
        torch.manual_seed(5)
        interests, mask = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
    row_means = []
    for b in range(interests.size(0)):
        active = [v / v.norm() for v, on in zip(interests[b], mask[b]) if on]
        cosines = [float(active[i] @ active[j]) for i in range(len(active)) for j in range(i + 1, len(active))]
        if cosines:
            row_means.append(sum(cosines) / len(cosines))
    assert 0 < len(row_means) < interests.size(0), "the batch must hold rows with one interest and with several"
    torch.testing.assert_close(loss.item(), ce.item() + weight * sum(row_means) / len(row_means), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("routing_gradient", [False, True])
def test_routing_gradient_makes_the_loss_gradient_exact_through_the_routing(tiny_config, routing_gradient):
    # A directional finite difference of the loss along a random change of S: with the routing
    # logits in the graph, autograd's gradient is the loss's true derivative; without, it leaves
    # out the routing's own dependence on S and misses it.
    model, train_data = build(tiny_config, routing_init="seeded", routing_gradient=routing_gradient,
                              exclude_history=False, softmax_dtype="float32")
    model = model.double().train()
    batch = fixed_batch(train_data)
    weight = model.routing.bilinear.weight
    direction = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0), dtype=weight.dtype)
    model.zero_grad()
    model.calculate_loss(batch).backward()
    autograd = float((weight.grad * direction).sum())
    with torch.no_grad():
        eps = 1e-6
        weight += eps * direction
        up = model.calculate_loss(batch).item()
        weight -= 2 * eps * direction
        down = model.calculate_loss(batch).item()
        weight += eps * direction
    numeric = (up - down) / (2 * eps)
    if routing_gradient:
        assert numeric == pytest.approx(autograd, rel=1e-4, abs=1e-8)
    else:
        assert abs(numeric - autograd) > 0.1 * abs(numeric), (numeric, autograd)


def merged_training_loss(tiny_config, **overrides):
    """(model, batch, loss) of one training batch under ``training_scores: merged`` in float32,
    with the paper's dynamic K'_u: rows with 1-3 interests; the loss drawn after seed 3."""
    model, train_data = build(tiny_config, training_scores="merged", softmax_dtype="float32", **overrides)
    model.train()
    batch = fixed_batch(train_data)
    assert len(set(model.interest_mask(batch[model.ITEM_SEQ_LEN]).sum(dim=1).tolist())) > 1
    with torch.no_grad():
        torch.manual_seed(3)
        return model, batch, model.calculate_loss(batch)


@pytest.mark.parametrize("exclude", [False, True])
def test_merged_training_scores_are_the_serving_max_over_the_active_interests(tiny_config, exclude):
    model, batch, loss = merged_training_loss(tiny_config, exclude_history=exclude)
    with torch.no_grad():
        expected = hand_ce_loss(model, batch, 3, exclude=exclude, merged=True)
        label_aware = hand_ce_loss(model, batch, 3, exclude=exclude)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert not torch.isclose(loss, label_aware, rtol=1e-4), "negatives must meet every interest's score"


@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("loss_type", ["CE", "SSM"])
def test_mixture_training_scores_sum_the_active_interests(tiny_config, exclude, loss_type):
    model, batch, loss = merged_training_loss(tiny_config, interest_merge="mixture", loss_type=loss_type,
                                              exclude_history=exclude)
    with torch.no_grad():
        if loss_type == "CE":
            expected = hand_ce_loss(model, batch, 3, exclude=exclude, merged="mixture")
        else:  # the same negatives, drawn after the forward's own draws
            torch.manual_seed(3)
            interests, mask = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
            negatives = torch.multinomial(model.sampling_log_prob.exp(), model.num_negatives, replacement=True)
            items, log_q, labels = model.item_vectors(), model.sampling_log_prob, batch[model.POS_ITEM_ID]
            losses = []
            for b in range(len(labels)):
                history = set(batch[model.ITEM_SEQ][b].tolist()) if exclude else set()
                score = lambda i: torch.logsumexp(interests[b][mask[b]] @ items[i] / model.temperature, 0) - log_q[i]
                logits = [score(labels[b])] + [score(n) for n in negatives
                                               if n != labels[b] and int(n) not in history]
                losses.append(-torch.log_softmax(torch.stack(logits), 0)[0])
            expected = torch.stack(losses).mean()
        maximum = hand_ce_loss(model, batch, 3, exclude=exclude, merged=True)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert not torch.isclose(loss, maximum, rtol=1e-4)


@pytest.mark.parametrize("k", [1, 3])
def test_mixture_serving_scores_equal_a_row_loop_and_predict(tiny_config, k):
    from recbole_mind.model.scoring import mixture_interest_scores

    model, _ = build(tiny_config, interest_num=k, training_scores="merged", interest_merge="mixture",
                     dynamic_interest=True)
    lengths = [1, 2, 3, 4, 5, 7, 8, L]
    batch = sequences(model, lengths)
    with torch.no_grad():
        interests, mask = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
        scores, given, items = model.full_sort_predict(batch), model.predict(batch), model.item_vectors()
        tiled = mixture_interest_scores(interests, mask, items, model.temperature, block_rows=3, block_items=7)
    tau = model.temperature
    expected = torch.stack([tau * torch.logsumexp(interests[b][mask[b]] @ items.t() / tau, dim=0)
                            for b in range(len(lengths))])
    expected[:, 0] = scores[:, 0]  # the padding item, as exclude_history leaves it
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tiled[:, 1:], expected[:, 1:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(given, scores[torch.arange(len(lengths)), batch[model.ITEM_ID]], rtol=1e-5, atol=1e-6)
    if k == 1:  # one interest: the mixture is its score
        torch.testing.assert_close(tiled, interests[:, 0] @ items.t(), rtol=1e-5, atol=1e-6)


def test_mixture_needs_merged_training_scores(tiny_config):
    with pytest.raises(UserError, match="interest_merge: mixture needs training_scores: merged"):
        build(tiny_config, interest_merge="mixture")
    with pytest.raises(UserError, match="interest_merge must be max or mixture"):
        build(tiny_config, interest_merge="sum", training_scores="merged")
