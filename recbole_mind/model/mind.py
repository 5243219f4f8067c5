r"""MIND
################################################

Reference:
    Chao Li et al. "Multi-Interest Network with Dynamic Routing for Recommendation at Tmall."
    in CIKM 2019 (arXiv 1904.08030).

Item vectors average the item id with its side features; B2I dynamic routing extracts K'_u
interest capsules from the behaviour sequence; a ReLU tower H mixes each with the user profile;
label-aware attention picks the interest that explains the label in training; serving scores an
item by its best-matching active interest. docs/model.md gives the semantics and every default
that differs from the paper, with its measured reason.
"""

from collections import namedtuple
from logging import getLogger

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss
from torch import nn

from recbole_mind.model.loss import cross_entropy, sampled_softmax
from recbole_mind.model.hyper_parameters import SOFTMAX_DTYPES, read_hyper_parameters
from recbole_mind.model.layers import (B2IRouting, FeatureEmbedding, LabelAwareAttention, active_interest_count,
                                       mean_pairwise_cosine, unit_length)
from recbole_mind.model.scoring import exclude_input_sequence, interest_scores, merge_interests, pack_active
from recbole_mind.repeats import describe, resolve_exclude_history

# What routing computed for a batch: interests [B, K, d] (inactive ones zero), interest_mask
# [B, K], the last routing weights [B, w, K] over the routed behaviours, the capsules u_j
# [B, K, d] (before the tower H) and the routed behaviours' positions [B, w] (None: all L).
Routing = namedtuple("Routing", "interests interest_mask weights capsules positions")


class MIND(SequentialRecommender):
    r"""MIND represents a user by K'_u interest vectors extracted by dynamic routing.

    Training scores the label with the label-aware mix of the interests (``merged``: the serving
    score); serving scores an item by its best interest or (``interest_merge: mixture``) by all.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        hp = read_hyper_parameters(config)
        self.embedding_size = hp.embedding_size
        self.interest_num = hp.interest_num
        self.dynamic_interest = hp.dynamic_interest
        self.behaviour_window = hp.behaviour_window
        self.recency_gain = hp.recency_gain
        self.interest_residual = hp.interest_residual
        self.normalize_vectors = hp.normalize_vectors
        self.temperature = hp.temperature
        # auto: on unless the training rows repeat their own input often (repeats.py)
        self.exclude_history_choice = resolve_exclude_history(hp.exclude_history, dataset)
        self.exclude_history = self.exclude_history_choice.on
        getLogger().info(describe(self.exclude_history_choice))
        self.softmax_matmul_dtype = SOFTMAX_DTYPES[hp.softmax_dtype]
        self.loss_type = hp.loss_type
        self.num_negatives = hp.num_negatives
        self.interest_diversity = hp.interest_diversity
        self.training_scores, self.interest_merge = hp.training_scores, hp.interest_merge

        # define layers and loss
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size, padding_idx=0)
        self.item_side = (FeatureEmbedding(dataset, dataset.get_item_feature(), hp.item_features,
                                           self.embedding_size, "item") if hp.item_features else None)
        self.user_profile = (FeatureEmbedding(dataset, dataset.get_user_feature(), hp.user_features,
                                              self.embedding_size, "user") if hp.user_features else None)
        self.routing = B2IRouting(self.embedding_size, self.interest_num, self.max_seq_length,
                                  iterations=hp.routing_iterations, init_std=hp.routing_init_std,
                                  softmax_axis=hp.routing_softmax_axis, seed=hp.routing_seed,
                                  init=hp.routing_init, gradient=hp.routing_gradient)
        tower, width = [], self.embedding_size * (1 + len(hp.user_features))
        for _ in range(hp.hidden_layers):
            tower += [nn.Linear(width, self.embedding_size), nn.ReLU()]
            width = self.embedding_size
        self.interest_tower = nn.Sequential(*tower)  # H; empty means identity
        if self.recency_gain:
            # log g_t for t = 0 (the most recent behaviour) .. L-1; zero: every gain 1, the paper
            self.recency_log_gain = nn.Parameter(torch.zeros(self.max_seq_length))
        self.attention = LabelAwareAttention(hp.attention_power,
                                             self.temperature if hp.attention_sampling else None)
        if self.loss_type == "BPR":
            self.bpr_loss = BPRLoss()
        if self.loss_type == "SSM":
            self.register_buffer("sampling_log_prob", self._sampling_log_prob(dataset, hp), persistent=False)

        # parameters initialization
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Embedding, nn.Linear)):
            nn.init.xavier_normal_(module.weight)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _sampling_log_prob(self, dataset, hp):
        """log Q(i) of the SSM proposal over items 1..n-1 (item 0 is padding, never drawn)."""
        weights = torch.ones(self.n_items)
        if hp.sampling_distribution == "popularity":
            weights = torch.zeros(self.n_items)
            counter = dataset.item_counter
            weights[torch.tensor(list(counter.keys()), dtype=torch.long)] = torch.tensor(
                list(counter.values()), dtype=torch.float)
            weights = (weights + 1.0).pow(hp.sampling_alpha)  # +1: unseen items stay drawable
        weights[0] = 0.0
        return torch.log(weights / weights.sum())

    # ----------------------------------------------------------------- vectors
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
        # normalize_vectors (not in the paper): every score a cosine, the softmax's sharpness the
        # temperature's alone, not the norms (CE grows them with frequency); zero rows stay zero.
        return unit_length(vectors) if self.normalize_vectors else vectors

    def table_rows(self, table, items):
        """The rows of ``table`` (all item vectors) for ``items``, with a sparse gradient when the
        table is computed (a dense one fills a zero [n_items, d] tensor every lookup); the embedding
        itself as the table keeps dense lookups: Adam takes no sparse gradient."""
        sparse = table.grad_fn is not None and torch.is_grad_enabled()
        return nn.functional.embedding(items, table, sparse=sparse)

    def interest_mask(self, item_seq_len):
        """[B, K] bool: True for the K'_u active interests of each row."""
        active = active_interest_count(item_seq_len, self.interest_num, self.dynamic_interest)
        positions = torch.arange(self.interest_num, device=item_seq_len.device)
        return positions.unsqueeze(0) < active.unsqueeze(1)

    def window_positions(self, item_seq_len):
        """[B, w]: the positions of each row's last ``behaviour_window`` behaviours (RecBole's
        sequences are left-aligned; a row shorter than w starts at 0 and ends in padding)."""
        steps = torch.arange(self.behaviour_window, device=item_seq_len.device)
        return (item_seq_len.unsqueeze(1) - self.behaviour_window).clamp(min=0) + steps

    @staticmethod
    def interest_mean(weights, values):
        """[B, K, d]: each interest's routing-weighted mean sum_i c_ij x_i / sum_i c_ij of the
        behaviours' values x_i [B, L, d] (zero for an interest with no weight)."""
        mass = weights.sum(dim=1).clamp(min=1e-9).unsqueeze(-1)  # [B, K, 1]
        return torch.einsum("blk,bld->bkd", weights, values) / mass

    # ----------------------------------------------------------------- interests
    def route(self, item_seq, item_seq_len, user=None, table=None):
        """:class:`Routing` of a batch; ``table`` holds all item vectors if the caller has them."""
        full_length, positions = item_seq.size(1), None
        if self.behaviour_window and self.behaviour_window < full_length:
            # behaviour_window (not in the paper): only the last w behaviours are routed, gathered
            # into a [B, w] sequence with the start logits of their own positions, which equals
            # routing the whole sequence with the others masked (tests/test_mind.py).
            positions = self.window_positions(item_seq_len)
            item_seq = item_seq.gather(1, positions)
            item_seq_len = item_seq_len.clamp(max=self.behaviour_window)
        seq_mask = item_seq > 0
        if self.recency_gain:
            steps = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
            recency = (item_seq_len.unsqueeze(1) - 1 - steps).clamp(min=0)  # 0: the most recent
        interest_mask = self.interest_mask(item_seq_len)
        # S applied to the table's n_items rows then gathered equals S applied to each of the
        # B x w behaviours, and is cheaper whenever n_items <= B x w. Training takes the cheaper
        # path (S on the behaviours gathered from the caller's table, if any); outside training a
        # caller's table always takes the table path: the exported tower needs one path for
        # every batch size.
        whole_table = (table is not None and not self.training) or self.n_items <= item_seq.numel()
        if table is None and whole_table:
            table = self.item_vectors()
        if whole_table:
            behaviours = None
            capsules_in = nn.functional.embedding(item_seq, self.routing.bilinear(table))
        else:
            behaviours = self.item_vectors(item_seq) if table is None else self.table_rows(table, item_seq)
            capsules_in = self.routing.bilinear(behaviours)
        if self.recency_gain:
            # recency_gain (not in the paper): capsule g_t S e_i with a learned gain per recency t
            capsules_in = capsules_in * self.recency_log_gain.exp()[recency].unsqueeze(-1)
        capsules, weights = self.routing.route(capsules_in, seq_mask, interest_mask,
                                               positions=positions, seq_length=full_length)
        tower_input = capsules
        if self.user_profile is not None:
            profile, _ = self.user_profile(user)  # [B, F, d]
            profile = profile.flatten(1).unsqueeze(1).expand(-1, self.interest_num, -1)
            tower_input = torch.cat([tower_input, profile], dim=-1)
        interests = self.interest_tower(tower_input)
        if self.interest_residual:
            # interest_residual (not in the paper): v_j = H(u_j) + m_j, m_j the routing-weighted
            # mean of the interest's behaviours' item vectors, so every score keeps a direct
            # e_b . e_i term, as SASRec's residual stream keeps the last item's embedding.
            if behaviours is None:
                behaviours = self.table_rows(table, item_seq)
            if self.recency_gain:
                behaviours = behaviours * self.recency_log_gain.exp()[recency].unsqueeze(-1)
            interests = interests + self.interest_mean(weights, behaviours)
        interests = self._normalized(interests * interest_mask.unsqueeze(-1))
        return Routing(interests, interest_mask, weights, capsules, positions)

    def forward(self, item_seq, item_seq_len, user=None, table=None):
        """Interest vectors [B, K, d] (inactive ones zero) and the active mask [B, K]."""
        routing = self.route(item_seq, item_seq_len, user, table)
        return routing.interests, routing.interest_mask

    def routing_details(self, item_seq, item_seq_len, user=None):
        """(interests, interest_mask, weights [B, L, K] per position of the input sequence,
        capsules u_j [B, K, d]): the routing as the model computes it, for explaining it."""
        routing = self.route(item_seq, item_seq_len, user)
        weights = routing.weights
        if routing.positions is not None:
            index = routing.positions.unsqueeze(-1).expand(-1, -1, self.interest_num)
            weights = weights.new_zeros(weights.size(0), item_seq.size(1), self.interest_num).scatter_(1, index, weights)
        return routing.interests, routing.interest_mask, weights, routing.capsules

    def _routing_of(self, interaction, table=None):
        user = interaction[self.USER_ID] if self.user_profile is not None else None
        return self.route(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], user, table=table)

    def _interests_of(self, interaction, table=None):
        routing = self._routing_of(interaction, table)
        return routing.interests, routing.interest_mask

    # ----------------------------------------------------------------- training
    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        # CE scores every item anyway: compute the table once and gather behaviours and labels
        table = self.item_vectors() if self.loss_type == "CE" or self.n_items <= item_seq.numel() else None
        routing = self._routing_of(interaction, table)
        interests, interest_mask = routing.interests, routing.interest_mask
        penalty = self.interest_penalty(routing)
        pos_items = interaction[self.POS_ITEM_ID]
        pos_emb = self.table_rows(table, pos_items) if table is not None else self.item_vectors(pos_items)
        merge = {"merge": self.interest_merge, "interest_mask": interest_mask}
        if self.training_scores == "merged":  # not in the paper: each logit the serving score
            mixture = self.interest_merge == "mixture"  # the mixture masks inactive interests itself
            user_vec = (interests if mixture else pack_active(interests, interest_mask)) / self.temperature
        else:
            user_vec = self.attention(interests, pos_emb, interest_mask) / self.temperature
        if self.loss_type == "CE":
            excluded = self.history_pairs(item_seq, pos_items) if self.exclude_history else None
            return penalty + cross_entropy(user_vec, table, pos_items, excluded=excluded, padding_idx=0,
                                           matmul_dtype=self.softmax_matmul_dtype, **merge)
        if self.loss_type == "SSM":
            negatives = torch.multinomial(self.sampling_log_prob.exp(), self.num_negatives, replacement=True)
            return penalty + sampled_softmax(user_vec, pos_items, pos_emb, negatives, self.item_vectors(negatives),
                                             self.sampling_log_prob, item_seq if self.exclude_history else None,
                                             **merge)
        neg_items = interaction[self.NEG_ITEM_ID] if self.NEG_ITEM_ID in interaction else (
            torch.randint(1, self.n_items, pos_items.shape, device=pos_items.device))
        pos_score = (user_vec * pos_emb).sum(-1)
        neg_score = (user_vec * self.item_vectors(neg_items)).sum(-1)
        return penalty + self.bpr_loss(pos_score, neg_score)

    def interest_penalty(self, routing):
        """``interest_diversity`` times the mean pairwise cosine of each row's active interests,
        averaged over the rows with two or more (0 when the weight is 0)."""
        if self.interest_diversity == 0 or self.interest_num == 1:
            return 0.0
        cosine = mean_pairwise_cosine(routing.interests, routing.interest_mask)
        several = ~cosine.isnan()
        return self.interest_diversity * cosine[several].sum() / several.sum().clamp(min=1)

    @staticmethod
    def history_pairs(item_seq, labels):
        """(rows, items): each row's input-sequence items but its own label (a repeated item may
        still be the label), left out of the training softmax with ``exclude_history``."""
        rows = torch.arange(item_seq.size(0), device=item_seq.device).unsqueeze(1).expand_as(item_seq)
        keep = (item_seq > 0) & (item_seq != labels.unsqueeze(1))
        return rows[keep], item_seq[keep]

    # ----------------------------------------------------------------- serving
    def predict(self, interaction):
        interests, interest_mask = self._interests_of(interaction)
        items = interaction[self.ITEM_ID]
        scores = torch.einsum("bkd,bd->bk", interests, self.item_vectors(items))
        scores = merge_interests(scores, interest_mask, self.interest_merge, self.temperature)
        if self.exclude_history:
            seen = (interaction[self.ITEM_SEQ] == items.unsqueeze(1)).any(dim=1)
            scores = scores.masked_fill(seen, float("-inf"))
        return scores

    def full_sort_predict(self, interaction):
        table = self.item_vectors()
        interests, interest_mask = self._interests_of(interaction, table)
        scores = interest_scores(interests, interest_mask, table, self.interest_merge, self.temperature)
        if self.exclude_history:
            exclude_input_sequence(scores, interaction[self.ITEM_SEQ])
        return scores
