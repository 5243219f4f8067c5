"""MIND
################################################

Reference:
    Chao Li et al. "Multi-Interest Network with Dynamic Routing for Recommendation at Tmall."
    in CIKM 2019 (arXiv 1904.08030).

The semantics follow MIND_SPEC.md: item vectors average the item id with its side features,
B2I dynamic routing extracts K'_u interest capsules, a ReLU tower H mixes each with the user
profile, label-aware attention picks the interest that explains the label in training, and
serving scores an item by its best-matching active interest. The defaults deviate from the spec
where measurement said so (properties/MIND.yaml marks each "Not in the spec"; README,
Configuration, lists the keys that give the spec's model).
"""

import math
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss
from recbole.utils import FeatureType
from torch import nn

from recbole_mind import softmax as chunked_softmax
from recbole_mind.errors import UserError
from recbole_mind.routing import B2IRouting, active_interest_count

LOSS_TYPES = ("CE", "SSM", "BPR")
SAMPLING_DISTRIBUTIONS = ("uniform", "popularity")
SOFTMAX_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}  # None: the model's own dtype
SOFTMAX_DTYPE_CHOICES = ("auto", *SOFTMAX_DTYPES)
# Keys added to MIND.yaml after models had been trained, each with the value that behaves as
# MIND did before it existed. A config without the key (a checkpoint saved back then: a fresh
# config always holds all of MIND.yaml) gets this value, not today's default, so an old model
# is rebuilt as it was trained; --compare judges old records the same way.
VALUE_BEFORE_KEY = {"exclude_history": False, "softmax_dtype": "float32",
                    "routing_init": "random", "behaviour_window": 0, "recency_gain": False,
                    "interest_projection": False, "dropout_prob": 0.0, "recency_maps": 0,
                    "history_negatives": False, "interest_recency": False,
                    "interest_recency_gain": False, "interest_residual": False,
                    "normalize_vectors": False}
_SCORE_GRAD_LIMIT = 1e30  # label-aware attention: largest gradient passed back to a score


def native_bf16_matmul(device):
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a CUDA GPU with bf16 support,
    or a CPU with AVX512-BF16 or AMX (elsewhere torch emulates bf16 and it is no faster)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence getattr
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return False


def resolve_softmax_dtype(name, device):
    """``softmax_dtype`` as the model uses it: ``auto`` becomes bfloat16 where the hardware has
    bf16 matmuls (same quality as float32 on amazon-videogames, ~30% faster epochs:
    results/experiments.md), float32 elsewhere."""
    if name != "auto":
        return name
    return "bfloat16" if native_bf16_matmul(device) else "float32"


def properties_dir():
    """The folder holding MIND.yaml and the other shipped RecBole yaml files."""
    source_tree = Path(__file__).resolve().parent.parent / "properties"
    if (source_tree / "MIND.yaml").is_file():
        return source_tree
    return Path(__file__).resolve().parent / "properties"  # installed wheel


def exclude_input_sequence(scores, item_seq):
    """``scores`` [B, n_items] with the items of each row's input sequence (and the padding item
    0) set to -inf, in place; returns ``scores``.

    Why MIND's ``exclude_history`` does this (a deviation from MIND_SPEC sections 5-6, measured
    in results/experiments.md): RecBole's full ranking of sequential models leaves the user's
    own history in the ranking, and a model that builds its interests from the behaviours scores
    those very behaviours highest; retrieval (recbole_mind.retrieval) filters them in any case.
    ``quick_start.history_excluded`` applies the same filter to any model, for comparisons.
    """
    return scores.scatter_(1, item_seq, float("-inf"))


def default_config():
    """MIND's defaults, as listed in properties/MIND.yaml."""
    with open(properties_dir() / "MIND.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)


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


class LabelAwareAttention(nn.Module):
    """v_u = sum_j softmax_j(pow(v_u^j . e_i, p)) v_u^j over the active interests.

    pow is sign-preserving: sign(s) |s|^p. It is computed as sign(s) exp(p log |s|) in float64
    with the exponent capped, so no p overflows or gives NaN; p = inf is hard attention.
    """

    def __init__(self, power):
        super().__init__()
        self.power = float(power)

    def forward(self, interests, label_emb, interest_mask):
        scores = torch.einsum("bkd,bd->bk", interests, label_emb)
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


def read_hyper_parameters(config):
    """MIND's keys from a RecBole Config (missing ones from MIND.yaml), converted and checked.

    Raises:
        UserError: one message listing every bad value and what it must be.
    """
    defaults = default_config()
    problems = []

    def param(key, convert):
        if key not in config and key in VALUE_BEFORE_KEY:
            return convert(VALUE_BEFORE_KEY[key])
        value = config[key] if key in config else None
        value = defaults.get(key) if value is None else value
        try:
            return convert(value)
        except (TypeError, ValueError):
            problems.append(f"{key} must be {convert.__name__}, got {value!r}")
            return defaults.get(key)

    def boolean(value):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, (bool, int)):
            return bool(value)
        raise ValueError(value)

    def names(value):
        return [str(v) for v in (value or [])] if not isinstance(value, str) else [value]

    hp = SimpleNamespace(
        embedding_size=param("embedding_size", int),
        interest_num=param("interest_num", int),
        dynamic_interest=param("dynamic_interest", boolean),
        routing_iterations=param("routing_iterations", int),
        routing_init_std=param("routing_init_std", float),
        routing_init=param("routing_init", str),
        behaviour_window=param("behaviour_window", int),
        recency_gain=param("recency_gain", boolean),
        recency_maps=param("recency_maps", int),
        routing_softmax_axis=param("routing_softmax_axis", str),
        routing_seed=param("routing_seed", int),
        hidden_layers=param("hidden_layers", int),
        interest_projection=param("interest_projection", boolean),
        interest_recency=param("interest_recency", boolean),
        interest_recency_gain=param("interest_recency_gain", boolean),
        interest_residual=param("interest_residual", boolean),
        normalize_vectors=param("normalize_vectors", boolean),
        dropout_prob=param("dropout_prob", float),
        attention_power=param("attention_power", float),
        temperature=param("temperature", float),
        exclude_history=param("exclude_history", boolean),
        history_negatives=param("history_negatives", boolean),
        softmax_dtype=param("softmax_dtype", str),
        loss_type=param("loss_type", str),
        num_negatives=param("num_negatives", int),
        sampling_distribution=param("sampling_distribution", str),
        sampling_alpha=param("sampling_alpha", float),
        user_features=param("user_features", names),
        item_features=param("item_features", names),
    )
    if hp.interest_num < 1:
        problems.append(f"interest_num must be >= 1, got {hp.interest_num}")
    if hp.routing_iterations < 1:
        problems.append(f"routing_iterations must be >= 1, got {hp.routing_iterations}")
    if not hp.attention_power > 0:
        problems.append(f"attention_power must be > 0 (inf for hard attention), got {hp.attention_power}")
    if hp.embedding_size < 1:
        problems.append(f"embedding_size must be >= 1, got {hp.embedding_size}")
    if hp.hidden_layers < 0 or (hp.hidden_layers == 0 and hp.user_features):
        problems.append(f"hidden_layers must be >= 0, and >= 1 with user_features, got {hp.hidden_layers}")
    if hp.interest_recency and hp.hidden_layers == 0:
        problems.append("interest_recency needs hidden_layers >= 1 (the tower is what reads it), got hidden_layers 0")
    if not hp.routing_init_std > 0:
        problems.append(f"routing_init_std must be > 0, got {hp.routing_init_std}")
    if hp.behaviour_window < 0:
        problems.append(f"behaviour_window must be >= 0 (0: every behaviour), got {hp.behaviour_window}")
    max_length = config["MAX_ITEM_LIST_LENGTH"] if "MAX_ITEM_LIST_LENGTH" in config else None
    if hp.recency_maps < 0 or (max_length is not None and hp.recency_maps > max_length):
        problems.append(f"recency_maps must be in [0, MAX_ITEM_LIST_LENGTH = {max_length}] (0: one shared S), "
                        f"got {hp.recency_maps}")
    if not 0.0 <= hp.dropout_prob < 1.0:
        problems.append(f"dropout_prob must be in [0, 1), got {hp.dropout_prob}")
    if hp.routing_init not in ("random", "seeded"):
        problems.append(f"routing_init must be random or seeded, got {hp.routing_init!r}")
    if hp.routing_softmax_axis not in ("interests", "behaviours"):
        problems.append(f"routing_softmax_axis must be interests or behaviours, got {hp.routing_softmax_axis!r}")
    if not hp.temperature > 0:
        problems.append(f"temperature must be > 0, got {hp.temperature}")
    if hp.loss_type not in LOSS_TYPES:
        problems.append(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {hp.loss_type!r}")
    if hp.loss_type == "SSM" and hp.num_negatives < 1:
        problems.append(f"num_negatives must be >= 1 with loss_type SSM, got {hp.num_negatives}")
    if hp.softmax_dtype not in SOFTMAX_DTYPE_CHOICES:
        problems.append(f"softmax_dtype must be auto, float32 or bfloat16, got {hp.softmax_dtype!r}")
    else:  # resolved here, so a run's record (and --compare's protocol) names what was used
        hp.softmax_dtype = resolve_softmax_dtype(hp.softmax_dtype, config["device"] if "device" in config else "cpu")
    if hp.sampling_distribution not in SAMPLING_DISTRIBUTIONS:
        problems.append(f"sampling_distribution must be uniform or popularity, got {hp.sampling_distribution!r}")
    if problems:
        raise UserError("MIND config: " + "; ".join(problems))
    return hp


class MIND(SequentialRecommender):
    r"""MIND extracts K'_u interest vectors from a behaviour sequence by dynamic routing.

    Training scores the label with the label-aware mix of the interests; serving scores every
    item by its best active interest, so ``full_sort_predict`` and ``predict`` agree.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        hp = read_hyper_parameters(config)
        self.embedding_size = hp.embedding_size
        self.interest_num = hp.interest_num
        self.dynamic_interest = hp.dynamic_interest
        self.routing_iterations = hp.routing_iterations
        self.behaviour_window = hp.behaviour_window
        self.recency_gain = hp.recency_gain
        self.recency_maps = hp.recency_maps
        self.interest_recency = hp.interest_recency
        self.interest_recency_gain = hp.interest_recency_gain
        self.interest_residual = hp.interest_residual
        self.normalize_vectors = hp.normalize_vectors
        self.hidden_layers = hp.hidden_layers
        self.attention_power = hp.attention_power
        self.temperature = hp.temperature
        self.exclude_history = hp.exclude_history
        # With exclude_history, keep the input sequence's items as negatives of the training
        # softmax all the same (the hardest ones: the interests are built from them) and remove
        # them only from the ranking. Not in the spec, whose softmax has them anyway.
        self.exclude_history_in_training = hp.exclude_history and not hp.history_negatives
        self.softmax_matmul_dtype = SOFTMAX_DTYPES[hp.softmax_dtype]
        self.loss_type = hp.loss_type
        self.num_negatives = hp.num_negatives
        self.sampling_distribution = hp.sampling_distribution
        self.sampling_alpha = hp.sampling_alpha
        self.user_features = hp.user_features
        self.item_features = hp.item_features

        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size, padding_idx=0)
        self.item_side = (
            FeatureEmbedding(dataset, dataset.get_item_feature(), self.item_features,
                             self.embedding_size, "item")
            if self.item_features else None
        )
        self.user_profile = (
            FeatureEmbedding(dataset, dataset.get_user_feature(), self.user_features,
                             self.embedding_size, "user")
            if self.user_features else None
        )
        self.routing = B2IRouting(
            self.embedding_size, self.interest_num, self.max_seq_length,
            iterations=self.routing_iterations, init_std=hp.routing_init_std,
            softmax_axis=hp.routing_softmax_axis, seed=hp.routing_seed, init=hp.routing_init,
        )
        tower, width = [], self.embedding_size * (1 + len(self.user_features) + self.interest_recency)
        for _ in range(self.hidden_layers):
            tower += [nn.Linear(width, self.embedding_size), nn.ReLU()]
            width = self.embedding_size
        if hp.interest_projection:
            # Not in the spec: H's last ReLU confines every interest to the non-negative orthant
            # (the item vectors are free); a final linear layer lets them point anywhere, as
            # GRU4Rec's and SASRec's user vectors can. Measured in results/experiments.md.
            tower.append(nn.Linear(width, self.embedding_size))
        self.interest_tower = nn.Sequential(*tower)  # H; empty means identity
        # Not in the spec: dropout on the behaviour capsules S e_i (and interest_residual's item
        # vectors) in training, the regulariser GRU4Rec (0.3) and SASRec (0.5) apply to their
        # input embeddings and MIND lacks.
        self.behaviour_dropout = nn.Dropout(hp.dropout_prob) if hp.dropout_prob > 0 else None
        if self.recency_gain:
            # log g_t for t = 0 (the most recent behaviour) .. L-1; zero: every gain 1, the spec
            self.recency_log_gain = nn.Parameter(torch.zeros(self.max_seq_length))
        if self.recency_maps:
            # S_t = S + D_t for the recency_maps most recent behaviours (t = 0: the last one);
            # D_t [d_out, d_in] start at zero: every S_t = S, the spec
            self.recency_map_delta = nn.Parameter(
                torch.zeros(self.recency_maps, self.embedding_size, self.embedding_size))
        if self.interest_recency:
            # r_t for t = 0 (the most recent behaviour) .. L-1; zero: the tower sees the spec's
            # input plus nothing
            self.recency_embedding = nn.Parameter(torch.zeros(self.max_seq_length, self.embedding_size))
        if self.interest_recency_gain:
            self.interest_log_gain = nn.Parameter(torch.zeros(self.max_seq_length))
        self.attention = LabelAwareAttention(self.attention_power)
        if self.loss_type == "BPR":
            self.bpr_loss = BPRLoss()
        if self.loss_type == "SSM":
            self.register_buffer("sampling_log_prob", self._sampling_log_prob(dataset), persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Embedding):
            nn.init.xavier_normal_(module.weight)
        elif isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def _sampling_log_prob(self, dataset):
        """log Q(i) of the SSM proposal over items 1..n-1 (item 0 is padding, never drawn)."""
        if self.sampling_distribution == "uniform":
            weights = torch.ones(self.n_items)
        else:
            weights = torch.zeros(self.n_items)
            counter = dataset.item_counter
            weights[torch.tensor(list(counter.keys()), dtype=torch.long)] = torch.tensor(
                list(counter.values()), dtype=torch.float
            )
            weights = (weights + 1.0).pow(self.sampling_alpha)  # +1: unseen items stay drawable
        weights[0] = 0.0
        return torch.log(weights / weights.sum())

    # ----------------------------------------------------------------- embeddings
    def item_vectors(self, items=None):
        """e_i for the given item ids (all items when None): id embedding averaged with features,
        unit length with ``normalize_vectors``."""
        if items is None:
            if self.item_side is None:  # the table itself: no copy, and a dense gradient
                return self._normalized(self.item_embedding.weight)
            items = torch.arange(self.n_items, device=self.item_embedding.weight.device)
        vectors = self.item_embedding(items)
        if self.item_side is None:
            return self._normalized(vectors)
        side, present = self.item_side(items)
        total = vectors + (side * present.unsqueeze(-1)).sum(dim=-2)
        return self._normalized(total / (1.0 + present.sum(dim=-1, keepdim=True)))

    def _normalized(self, vectors):
        # Not in the spec (normalize_vectors): unit vectors, so every score is a cosine and the
        # softmax's sharpness is the temperature's alone, not the embeddings' norms (which CE
        # grows with an item's frequency). A zero row (an inactive interest) stays zero.
        return nn.functional.normalize(vectors, dim=-1) if self.normalize_vectors else vectors

    def interest_mask(self, item_seq_len):
        """[B, K] bool: True for the K'_u active interests of each row."""
        active = active_interest_count(item_seq_len, self.interest_num, self.dynamic_interest)
        positions = torch.arange(self.interest_num, device=item_seq_len.device)
        return positions.unsqueeze(0) < active.unsqueeze(1)

    def forward(self, item_seq, item_seq_len, user=None, return_routing=False, table=None):
        """Interest vectors [B, K, d] (inactive ones zero) and the active mask [B, K]; with
        ``return_routing`` also the last routing weights [B, L, K] and the capsules u_j [B, K, d]
        (routing output before the tower H), for explaining the model as it computes.

        ``table``: all item vectors, if the caller has them (training with CE, full sort).
        """
        full_length = item_seq.size(1)
        window_positions = None
        if self.behaviour_window and self.behaviour_window < full_length:
            # Only the last behaviour_window behaviours are routed. Not in the spec, which routes
            # all of them: on these datasets the next item follows the last few, and a bag of 50
            # dilutes them (ml-100k test NDCG@10 0.0595 with all, 0.0962 with the last 5:
            # results/experiments.md). 0 restores the spec.
            # They are gathered into a [B, w] sequence (RecBole's sequences are left-aligned, zero
            # after n), so routing works on w positions instead of L with the rest masked: a
            # routing step on 2048 x 5 instead of 2048 x 50 behaviours took 6.5 ms instead of 35.
            # The start logits are those of the behaviours' own positions (the same random draw
            # in training, the same fixed draw in evaluation), so the interests equal routing
            # the whole masked sequence (B2IRouting.route with positions; tests/test_mind.py).
            window_positions = self.window_positions(item_seq_len)
            item_seq = item_seq.gather(1, window_positions)
            item_seq_len = item_seq_len.clamp(max=self.behaviour_window)
        seq_mask = item_seq > 0
        if self.recency_gain or self.interest_recency or self.interest_recency_gain:
            positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
            recency = (item_seq_len.unsqueeze(1) - 1 - positions).clamp(min=0)  # 0: the most recent
        # K'_u from the routed behaviours. The spec's rule (dynamic_interest: True) then gives at
        # most floor(log2 5) = 2 interests under the window; the default (False) gives every user
        # K: test NDCG@10 +4% on amazon-videogames over two seeds, ml-100k level
        # (results/experiments.md, session 5).
        interest_mask = self.interest_mask(item_seq_len)
        if table is None and self.n_items <= item_seq.numel():
            table = self.item_vectors()
        behaviour_vectors = None  # e_i of the routed behaviours, where already computed
        if table is not None:
            # S applied to the n_items rows of the table, then gathered: the same S e_i as
            # applying it to the B x L behaviours (profiled: the largest matmul of a step
            # on ml-100k before), and cheaper whenever n_items < B x L.
            projected = nn.functional.embedding(item_seq, self.routing.bilinear(table))
        else:
            behaviour_vectors = self.item_vectors(item_seq)
            projected = self.routing.bilinear(behaviour_vectors)
        if self.recency_maps:
            projected = self._add_recency_maps(projected, item_seq, item_seq_len, table)
        if self.behaviour_dropout is not None:
            projected = self.behaviour_dropout(projected)
        if self.recency_gain:
            # Not in the spec: behaviour capsule g_t S e_i with a learned gain per recency t, a
            # soft, learned behaviour_window (one weight per position from the end; a bigger
            # capsule pulls its interest harder and counts more in z_j). Measured in
            # results/experiments.md.
            projected = projected * self.recency_log_gain.exp()[recency].unsqueeze(-1)
        capsules, weights = self.routing.route(projected, seq_mask, interest_mask,
                                               positions=window_positions, seq_length=full_length)
        tower_input = capsules
        if self.interest_recency:
            tower_input = torch.cat([tower_input, self.interest_mean(weights, self.recency_embedding[recency])], dim=-1)
        if self.user_profile is not None:
            profile, _ = self.user_profile(user)  # [B, F, d]
            profile = profile.flatten(1).unsqueeze(1).expand(-1, self.interest_num, -1)
            tower_input = torch.cat([tower_input, profile], dim=-1)
        interests = self.interest_tower(tower_input)
        if self.interest_residual:
            # Not in the spec: v_j = H(u_j) + m_j with m_j the routing-weighted mean of the
            # interest's behaviours' own item vectors (recency gains applied), so the score of
            # item i keeps a direct e_b . e_i term, as the residual stream of SASRec (and
            # GRU4Rec's shared table) keeps the last item's embedding. H alone maps a squashed
            # capsule through one ReLU layer and loses that path. Measured in
            # results/experiments.md (session 7).
            behaviours = (behaviour_vectors if behaviour_vectors is not None
                          else nn.functional.embedding(item_seq, table))
            if self.behaviour_dropout is not None:  # the residual's behaviours dropped like the capsules
                behaviours = self.behaviour_dropout(behaviours)
            if self.recency_gain:
                behaviours = behaviours * self.recency_log_gain.exp()[recency].unsqueeze(-1)
            interests = interests + self.interest_mean(weights, behaviours)
        interests = interests * interest_mask.unsqueeze(-1)
        interests = self._normalized(interests)
        if self.interest_recency_gain:
            # Not in the spec: a scalar version of interest_recency (one learned log-gain per
            # recency, averaged over the interest's behaviours by routing weight), so a recent
            # interest can outscore an old one in the max. Measured in results/experiments.md.
            log_gain = self.interest_mean(weights, self.interest_log_gain[recency].unsqueeze(-1))
            interests = interests * log_gain.exp()
        if return_routing:
            if window_positions is not None:  # weights per position of the input sequence
                index = window_positions.unsqueeze(-1).expand(-1, -1, self.interest_num)
                weights = weights.new_zeros(weights.size(0), full_length, self.interest_num).scatter_(1, index, weights)
            return interests, interest_mask, weights, capsules
        return interests, interest_mask

    def window_positions(self, item_seq_len):
        """[B, w]: the positions of each row's last ``behaviour_window`` behaviours (RecBole's
        sequences are left-aligned; a row shorter than w starts at 0 and ends in padding)."""
        steps = torch.arange(self.behaviour_window, device=item_seq_len.device)
        return (item_seq_len.unsqueeze(1) - self.behaviour_window).clamp(min=0) + steps

    @staticmethod
    def interest_mean(weights, values):
        """[B, K, d]: each interest's routing-weighted mean sum_i c_ij x_i / sum_i c_ij of the
        behaviours' values x_i [B, L, d], with the routing's last weights c_ij (zero for padding
        and inactive interests, whose mean is then 0).

        Not in the spec; what the interest_* keys feed the interests: the item vectors
        (interest_residual), learned recency embeddings (interest_recency: squash normalises
        every capsule, so an interest from the last behaviour and one from the fifth last reach
        H alike, and r_j beside u_j, as the spec puts the profile beside it, lets H weigh them)
        or log-gains (interest_recency_gain). Measured in results/experiments.md.
        """
        mass = weights.sum(dim=1).clamp(min=1e-9).unsqueeze(-1)  # [B, K, 1]
        return torch.einsum("blk,bld->bkd", weights, values) / mass

    def _add_recency_maps(self, projected, item_seq, seq_len, table):
        """Behaviour capsules S_t e_i = S e_i + D_t e_i for the rows' recency_maps most recent
        behaviours (t = 0: the last one); the older ones keep the shared S.

        Not in the spec, whose one shared S makes a capsule the same map of e_i wherever the
        behaviour stands: with a map per recency the last item can say "what comes next" and
        the older ones "what the user likes" (recency_gain only scales them). Only the m latest
        of each row are gathered, so the cost is B x m x d^2, not B x L x d^2. Measured in
        results/experiments.md.
        """
        m = min(self.recency_maps, item_seq.size(1))
        steps = torch.arange(m, device=item_seq.device).unsqueeze(0)
        positions = (seq_len.unsqueeze(1) - 1 - steps).clamp(min=0)  # [B, m]: position of recency t
        valid = (steps < seq_len.unsqueeze(1)).unsqueeze(-1)
        items = item_seq.gather(1, positions)
        vectors = table[items] if table is not None else self.item_vectors(items)
        delta = torch.einsum("bmi,moi->bmo", vectors, self.recency_map_delta[:m]) * valid
        index = positions.unsqueeze(-1).expand(-1, -1, projected.size(-1))
        return projected.scatter_add(1, index, delta.to(projected.dtype))

    def _interests_of(self, interaction, table=None):
        user = interaction[self.USER_ID] if self.user_profile is not None else None
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], user, table=table)

    # ----------------------------------------------------------------- training
    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        # CE scores every item anyway: compute the table once and gather behaviours and labels
        table = self.item_vectors() if self.loss_type == "CE" or self.n_items <= item_seq.numel() else None
        interests, interest_mask = self._interests_of(interaction, table)
        pos_items = interaction[self.POS_ITEM_ID]
        pos_emb = table[pos_items] if table is not None else self.item_vectors(pos_items)
        user_vec = self.attention(interests, pos_emb, interest_mask) / self.temperature
        if self.loss_type == "CE":
            # the exact softmax over all items but padding (and the history), in cache-sized
            # chunks: the same loss and gradients as cross_entropy(user_vec @ table.T) without
            # its [B, n_items] tensors, which made up most of a step (recbole_mind/softmax.py)
            excluded = self.history_pairs(item_seq, pos_items) if self.exclude_history_in_training else None
            return chunked_softmax.cross_entropy(user_vec, table, pos_items, excluded=excluded, padding_idx=0,
                                                 matmul_dtype=self.softmax_matmul_dtype)
        if self.loss_type == "SSM":
            return self._sampled_softmax_loss(user_vec, pos_items, pos_emb,
                                              item_seq if self.exclude_history_in_training else None)
        neg_items = interaction[self.NEG_ITEM_ID] if self.NEG_ITEM_ID in interaction else (
            torch.randint(1, self.n_items, pos_items.shape, device=pos_items.device)
        )
        pos_score = (user_vec * pos_emb).sum(-1)
        neg_score = (user_vec * self.item_vectors(neg_items)).sum(-1)
        return self.bpr_loss(pos_score, neg_score)

    @staticmethod
    def history_pairs(item_seq, labels):
        """(rows, items): each row's input-sequence items but its own label (a repeated item may
        still be the label), for ``exclude_history`` in the training softmax (see
        :func:`exclude_input_sequence` for why)."""
        rows = torch.arange(item_seq.size(0), device=item_seq.device).unsqueeze(1).expand_as(item_seq)
        keep = (item_seq > 0) & (item_seq != labels.unsqueeze(1))
        return rows[keep], item_seq[keep]

    def _sampled_softmax_loss(self, user_vec, pos_items, pos_emb, item_seq=None):
        """Sampled softmax with log-Q correction; negatives equal to a row's label (or, given
        ``item_seq`` for ``exclude_history``, in its input sequence) are masked."""
        negatives = torch.multinomial(self.sampling_log_prob.exp(), self.num_negatives, replacement=True)
        pos_logit = (user_vec * pos_emb).sum(-1, keepdim=True) - self.sampling_log_prob[pos_items].unsqueeze(-1)
        neg_logits = user_vec @ self.item_vectors(negatives).t() - self.sampling_log_prob[negatives]
        hits = negatives.unsqueeze(0) == pos_items.unsqueeze(1)
        if item_seq is not None:
            # each negative looked up in the row's sorted sequence: [B, M], no [B, n_items] mask
            # (SSM is for catalogues too large for one)
            ordered = item_seq.sort(dim=1).values
            negs = negatives.unsqueeze(0).expand(item_seq.size(0), -1).contiguous()
            found = torch.searchsorted(ordered, negs).clamp(max=item_seq.size(1) - 1)
            hits = hits | (ordered.gather(1, found) == negs)
        neg_logits = neg_logits.masked_fill(hits, float("-inf"))
        logits = torch.cat([pos_logit, neg_logits], dim=1)
        return nn.functional.cross_entropy(logits, torch.zeros_like(pos_items))

    # ----------------------------------------------------------------- serving
    def predict(self, interaction):
        interests, interest_mask = self._interests_of(interaction)
        items = interaction[self.ITEM_ID]
        scores = torch.einsum("bkd,bd->bk", interests, self.item_vectors(items))
        scores = scores.masked_fill(~interest_mask, float("-inf")).amax(dim=-1)
        if self.exclude_history:
            seen = (interaction[self.ITEM_SEQ] == items.unsqueeze(1)).any(dim=1)
            scores = scores.masked_fill(seen, float("-inf"))
        return scores

    def full_sort_predict(self, interaction):
        table = self.item_vectors()
        interests, interest_mask = self._interests_of(interaction, table)
        scores = self.max_interest_scores(interests, interest_mask, table)
        if self.exclude_history:
            exclude_input_sequence(scores, interaction[self.ITEM_SEQ])
        return scores

    def max_interest_scores(self, interests, interest_mask, item_emb, block_rows=256, block_items=1024):
        """[B, N] max over active interests of v_u^j . e_i.

        Profiled on amazon-videogames (4096 users x 23.7k items, K 4), a [B, N] matmul per
        interest then a max took 5.6 s a batch, 4x SASRec's whole scoring: four [B, N] products
        of 388 MB each went through memory. Here the work goes in tiles of ``block_rows`` users x
        ``block_items`` items whose products stay in cache: one matmul of the tile's users' active
        interests, then the max over them, written once into the result. bench/profile_eval.py
        on the comparison's checkpoint, beside one other job: 7.4 s for the test set's eight
        batches, against 8.8 s for session 2's items-in-chunks version; equal to the plain max,
        tests/test_mind.py. With a varying number of active interests (dynamic_interest), rows
        are sorted by it so a tile scores only as many interests as its rows use.
        """
        batch, k, dim = interests.shape
        n_items = item_emb.size(0)
        active = interest_mask.sum(dim=1)
        if batch == 0 or not bool((active > 0).all()):  # a row with no interest: its scores -inf
            scores = torch.einsum("bkd,nd->bkn", interests, item_emb)
            return scores.masked_fill_(~interest_mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        # Active interests first in each row, and every inactive slot a copy of the row's first
        # active interest: a duplicate never changes the max, so a tile needs no mask.
        slots = torch.argsort((~interest_mask).to(torch.int8), dim=1, stable=True)
        packed = interests.gather(1, slots.unsqueeze(-1).expand(-1, -1, dim))
        prefix = torch.arange(k, device=active.device).unsqueeze(0) < active.unsqueeze(1)
        packed = torch.where(prefix.unsqueeze(-1), packed, packed[:, :1])
        sorted_rows = not bool((active == active[0]).all())
        if sorted_rows:
            order = torch.argsort(active, descending=True, stable=True)
            packed, active = packed[order], active[order]
        items_t = item_emb.t()
        scores = torch.empty(batch, n_items, dtype=interests.dtype, device=interests.device)
        for r0 in range(0, batch, block_rows):
            r1 = min(r0 + block_rows, batch)
            used = int(active[r0])  # the most active interests in this tile (rows sorted)
            tile_interests = packed[r0:r1, :used].reshape(-1, dim)
            for c0 in range(0, n_items, block_items):
                c1 = min(c0 + block_items, n_items)
                products = (tile_interests @ items_t[:, c0:c1]).view(r1 - r0, used, c1 - c0)
                if sorted_rows:
                    scores[order[r0:r1], c0:c1] = products.amax(dim=1)
                else:
                    torch.amax(products, dim=1, out=scores[r0:r1, c0:c1])
        return scores
