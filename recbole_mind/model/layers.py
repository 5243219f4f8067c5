"""The layers of MIND: B2I dynamic routing, label-aware attention and feature embedding.

Reference:
    Chao Li et al. "Multi-Interest Network with Dynamic Routing for Recommendation at Tmall."
    in CIKM 2019 (arXiv 1904.08030), sections 3.2-3.4; semantics in docs/model.md.
"""

import math

import torch
from recbole.utils import FeatureType
from torch import nn

from recbole_mind.errors import UserError

INTERESTS = "interests"
BEHAVIOURS = "behaviours"
RANDOM = "random"
SEEDED = "seeded"
_MASKED_LOGIT = -1e9  # finite, so a row with nothing active softmaxes to uniform, not NaN
_SCORE_GRAD_LIMIT = 1e30  # label-aware attention: largest gradient passed back to a score


def squash(z, eps=1e-9):
    """u = |z|^2 / (1 + |z|^2) * z / |z|, along the last axis; zero maps to zero."""
    squared_norm = (z * z).sum(dim=-1, keepdim=True)
    return z * (squared_norm / (1.0 + squared_norm) / torch.sqrt(squared_norm + eps))


class _UnitLength(torch.autograd.Function):
    """x / max(|x|, eps) along the last axis, as ``nn.functional.normalize`` computes it, with a
    backward of three passes over x instead of autograd's chain through the norm and the division
    (on the 23.7k x 64 item table that MIND normalises every training step: 4 ms against 11 on one
    thread)."""

    @staticmethod
    def forward(ctx, x, eps):
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min_(eps)
        y = x / norm
        ctx.save_for_backward(y, norm)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad):
        # dy/dx = (I - y y^T) / |x|; a row whose norm was clamped to eps divides by the constant eps
        y, norm = ctx.saved_tensors
        if grad.is_sparse:  # rows looked up with a sparse gradient, and no dense use of y
            grad = grad.to_dense()
        along = torch.einsum("...d,...d->...", grad, y).unsqueeze(-1).masked_fill_(norm <= ctx.eps, 0.0)
        return torch.addcmul(grad, y, along, value=-1).div_(norm), None


def unit_length(x, eps=1e-12):
    """``nn.functional.normalize(x, dim=-1)``: the same values, a faster backward."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _UnitLength.apply(x, eps)
    return nn.functional.normalize(x, dim=-1, eps=eps)


def mean_pairwise_cosine(vectors, mask):
    """[B]: the mean cosine over pairs of a row's active vectors ([B, K, d], ``mask`` [B, K]);
    NaN for a row with fewer than two."""
    pairs = (mask.unsqueeze(2) & mask.unsqueeze(1)).triu(diagonal=1)  # [B, K, K], i < j
    unit = unit_length(vectors)
    count = pairs.sum(dim=(1, 2))
    total = ((unit @ unit.transpose(1, 2)) * pairs).sum(dim=(1, 2))
    return torch.where(count > 0, total / count.clamp(min=1), float("nan"))


def active_interest_count(seq_len, interest_num, dynamic):
    """K'_u = max(1, min(K, floor(log2 n))) if dynamic else K, for a tensor of lengths n."""
    if not dynamic:
        return torch.full_like(seq_len, interest_num)
    # log2 in float64 is exact at powers of two, and other n <= 2^52 are far from them.
    floor_log2 = torch.log2(seq_len.clamp(min=1).double()).floor().long()
    return floor_log2.clamp(min=1, max=interest_num)


class B2IRouting(nn.Module):
    """B2I routing: behaviour capsules S e_i are routed into K interest capsules.

    Args:
        embedding_size: d, the size of behaviour and interest capsules.
        interest_num: K, the most interest capsules a user gets.
        max_seq_length: L, the longest behaviour sequence (rows of the evaluation logits).
        iterations: R, routing iterations (>= 1).
        init_std: sigma of the N(0, sigma^2) routing logits drawn for every training row.
        softmax_axis: ``"interests"`` (each behaviour spreads over the interests, as in the
            paper's Algorithm 1) or ``"behaviours"`` (each interest normalises over behaviours,
            as in the capsule-network convention some implementations follow).
        seed: seed of the fixed evaluation logits, so one user always gets the same interests.
        init: ``"random"`` (the paper: logits drawn from N(0, sigma^2)) or ``"seeded"`` (not in
            the paper): interest j starts as the squashed capsule of one of the user's own
            behaviours (the most recent, then farthest-point picks), and the start logits are
            their agreements u_j . S e_i, as after a routing step: k-means seeded from the data
            instead of from a random, position-fixed split; the same in training and serving.
        gradient: keep the routing logits in the graph (not in the paper; ComiRec detaches
            them), so a loss also trains what each interest gathers, not only the last z_j.
    """

    def __init__(self, embedding_size, interest_num, max_seq_length, iterations=3,
                 init_std=1.0, softmax_axis=INTERESTS, seed=2019, init=RANDOM, gradient=False):
        super().__init__()
        if softmax_axis not in (INTERESTS, BEHAVIOURS):
            raise ValueError(
                f"routing_softmax_axis must be '{INTERESTS}' or '{BEHAVIOURS}', got {softmax_axis!r}"
            )
        if init not in (RANDOM, SEEDED):
            raise ValueError(f"routing_init must be '{RANDOM}' or '{SEEDED}', got {init!r}")
        self.interest_num = interest_num
        self.iterations = iterations
        self.gradient = gradient
        self.init_std = init_std
        self.init = init
        self.softmax_axis = softmax_axis
        # The shared bilinear map S (d x d): one matrix for every behaviour-interest pair.
        self.bilinear = nn.Linear(embedding_size, embedding_size, bias=False)
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer(
            "eval_logits",
            torch.randn(max_seq_length, interest_num, generator=generator) * init_std,
        )

    def initial_logits(self, batch_size, seq_length, device, positions=None):
        """[B, seq_length, K] random start logits (a fresh draw in training, the fixed draw in
        evaluation); with ``positions`` [B, w], those positions' logits [B, w, K] out of the same
        [B, seq_length, K]: behaviours gathered from a longer sequence keep their own."""
        if self.training:
            # The buffer's dtype follows .double()/.half(), so training logits match the capsules.
            logits = torch.randn(batch_size, seq_length, self.interest_num, device=device,
                                 dtype=self.eval_logits.dtype) * self.init_std
        elif seq_length > self.eval_logits.size(0):
            raise ValueError(
                f"sequence length {seq_length} exceeds MAX_ITEM_LIST_LENGTH "
                f"{self.eval_logits.size(0)} the model was built with"
            )
        else:
            logits = self.eval_logits[:seq_length].unsqueeze(0).expand(batch_size, -1, -1)
        if positions is None:
            return logits
        return logits.gather(1, positions.unsqueeze(-1).expand(-1, -1, self.interest_num))

    @staticmethod
    def seed_positions(projected, seq_mask, interest_num):
        """[B, K] positions of the seed behaviours: the most recent one, then each next the
        behaviour least similar (cosine of S e_i) to every seed chosen so far (farthest-point
        seeding, as k-means++ without the randomness). A loop over K only; rows with fewer
        behaviours than K repeat a seed."""
        batch = torch.arange(projected.size(0), device=projected.device)
        unit = nn.functional.normalize(projected, dim=-1)
        steps = torch.arange(seq_mask.size(1), device=seq_mask.device)
        positions = [(seq_mask * steps).amax(dim=1)]  # the last real behaviour
        closest = torch.full(seq_mask.shape, float("-inf"), dtype=unit.dtype, device=unit.device)
        for _ in range(1, interest_num):
            chosen = unit[batch, positions[-1]]  # [B, d]
            closest = torch.maximum(closest, torch.einsum("bld,bd->bl", unit, chosen))
            positions.append(closest.masked_fill(~seq_mask, float("inf")).argmin(dim=1))
        return torch.stack(positions, dim=1)

    def seeded_logits(self, projected, seq_mask, interest_mask):
        """[B, L, K] start logits u_j . S e_i with u_j = squash(S e_{p_j}) for the seed
        behaviours p_j (:meth:`seed_positions`); the routing masks inactive interests."""
        positions = self.seed_positions(projected, seq_mask, interest_mask.size(1))
        seeds = torch.gather(projected, 1, positions.unsqueeze(-1).expand(-1, -1, projected.size(-1)))
        return torch.einsum("bkd,bld->blk", squash(seeds), projected)

    def routing_weights(self, logits, mask):
        """Masked softmax of the logits [B, L, K]; masked entries get weight exactly 0.

        Written out rather than torch.softmax: over the short interest axis (K = 4) torch's
        kernel is several times slower than these in-place steps (the logits carry no
        gradient, so autograd does not see them).
        """
        dim = -1 if self.softmax_axis == INTERESTS else 1
        masked = logits.masked_fill(~mask, _MASKED_LOGIT)
        if masked.requires_grad:  # routing_gradient: autograd needs the out-of-place softmax
            return torch.softmax(masked, dim=dim) * mask
        exp = (masked - masked.amax(dim=dim, keepdim=True)).exp_()
        return exp.div_(exp.sum(dim=dim, keepdim=True)).mul_(mask)

    def forward(self, behaviours, seq_mask, interest_mask, logits=None):
        """Route behaviours into interests.

        Args:
            behaviours: [B, L, d] behaviour embeddings e_i (padding rows are ignored).
            seq_mask: [B, L] bool, True for real behaviours.
            interest_mask: [B, K] bool, True for the K'_u active interests.
            logits: optional [B, L, K] initial logits (defaults to ``initial_logits``).

        Returns:
            (interests [B, K, d], weights [B, L, K]): the squashed interest capsules (inactive
            ones are zero) and the last iteration's routing weights.
        """
        return self.route(self.bilinear(behaviours), seq_mask, interest_mask, logits)

    def route(self, projected, seq_mask, interest_mask, logits=None, positions=None, seq_length=None):
        """:meth:`forward` from the behaviour capsules S e_i [B, L, d] themselves (a caller that
        has S applied to the whole item table gathers them from it: far fewer rows than B x L).

        ``positions`` [B, L] and ``seq_length``: the behaviours were gathered from these
        positions of a sequence of ``seq_length``, and the random start takes those positions'
        logits (:meth:`initial_logits`), so routing them equals routing the whole sequence with
        the others masked. The seeded start needs neither: it is computed from the behaviours.
        """
        batch_size, routed_length, _ = projected.shape
        projected_const = projected if self.gradient else projected.detach()
        if logits is None and self.init == SEEDED:
            logits = self.seeded_logits(projected_const, seq_mask, interest_mask)
        elif logits is None:
            logits = self.initial_logits(batch_size, seq_length or routed_length, projected.device, positions)
        mask = seq_mask.unsqueeze(-1) & interest_mask.unsqueeze(1)  # [B, L, K]
        for iteration in range(self.iterations):
            weights = self.routing_weights(logits, mask)
            last = iteration == self.iterations - 1
            # Unless ``gradient``, the logits carry no gradient: only the last z_j sees S e_i with its gradient.
            interests = squash(torch.einsum("blk,bld->bkd", weights, projected if last else projected_const))
            if not last:
                logits = logits + torch.einsum("bkd,bld->blk", interests, projected_const)
        return interests, weights


class LabelAwareAttention(nn.Module):
    """v_u = sum_j softmax_j(pow(v_u^j . e_i, p)) v_u^j over the active interests.

    pow is sign-preserving: sign(s) |s|^p. It is computed as sign(s) exp(p log |s|) in float64
    with the exponent capped, so no p overflows or gives NaN; p = inf is hard attention.
    With ``sample_temperature`` (not in the paper; BaM, Lee et al. 2024), training instead picks
    one interest at random with probability softmax_j(v_u^j . e_i / tau), so an interest that
    explains the label a little less still gets its gradient; evaluation is unchanged.
    """

    def __init__(self, power, sample_temperature=None):
        super().__init__()
        self.power = float(power)
        self.sample_temperature = sample_temperature

    def forward(self, interests, label_emb, interest_mask):
        scores = torch.einsum("bkd,bd->bk", interests, label_emb)
        if self.sample_temperature and self.training:
            logits = (scores / self.sample_temperature).masked_fill(~interest_mask, float("-inf"))
            picked = torch.multinomial(torch.softmax(logits.detach().float(), dim=-1), 1).squeeze(1)
            return interests[torch.arange(interests.size(0), device=interests.device), picked]
        if math.isinf(self.power):
            best = scores.masked_fill(~interest_mask, float("-inf")).argmax(dim=-1)
            return interests[torch.arange(interests.size(0), device=interests.device), best]
        s = scores.double()
        if s.requires_grad:
            # At an exact tie of large scores the slope p |s|^(p-1) (50 * 40^49 for p = 50) is
            # finite in float64 but overflows float32 on its way back, and one inf turns the
            # parameters into NaN: clip it to a size float32 still holds.
            s.register_hook(lambda grad: grad.clamp(-_SCORE_GRAD_LIMIT, _SCORE_GRAD_LIMIT))
        magnitude = torch.exp((self.power * torch.log(s.abs().clamp(min=1e-30))).clamp(max=700.0))
        powered = (torch.sign(s) * magnitude).masked_fill(~interest_mask, float("-inf"))
        weights = torch.softmax(powered, dim=-1).to(interests.dtype)
        return torch.einsum("bk,bkd->bd", weights, interests)


class FeatureEmbedding(nn.Module):
    """Embeds a dataset's token and token-sequence features, looked up by user or item id.

    The feature table is copied from the dataset once, so a batch needs only the ids.
    A token sequence (e.g. ml-100k's genres) is the mean of its tokens' embeddings; its
    padding token 0 counts for nothing. Every output is [..., n_fields, d] plus a mask of which
    fields the row actually has (an empty genre list has none).
    """

    def __init__(self, dataset, table, fields, embedding_size, source):
        super().__init__()
        self.fields = list(fields)
        self.embeddings = nn.ModuleList()
        for i, field in enumerate(self.fields):
            if field not in dataset.field2type or field not in table.columns:
                raise UserError(
                    f"{source}_features names '{field}', which the dataset's .{source} file does not "
                    f"have (or load_col does not load): remove it from {source}_features"
                )
            ftype = dataset.field2type[field]
            if ftype not in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ):
                raise UserError(
                    f"{source} feature '{field}' is {ftype.value}; MIND embeds token and "
                    f"token_seq features only: remove it from {source}_features"
                )
            values = table[field].long()
            if values.dim() == 1:
                values = values.unsqueeze(-1)
            self.register_buffer(f"table_{i}", values, persistent=False)
            self.embeddings.append(nn.Embedding(dataset.num(field), embedding_size, padding_idx=0))

    def forward(self, ids):
        vectors, present = [], []
        for i, embedding in enumerate(self.embeddings):
            tokens = getattr(self, f"table_{i}")[ids]  # [..., T]
            token_mask = (tokens > 0).unsqueeze(-1).float()
            count = token_mask.sum(dim=-2)
            vectors.append((embedding(tokens) * token_mask).sum(dim=-2) / count.clamp(min=1))
            present.append(count.squeeze(-1) > 0)
        return torch.stack(vectors, dim=-2), torch.stack(present, dim=-1)
