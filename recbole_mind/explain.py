"""The explain mode: routing pictures, capsule health, and whether a MIND's interests mean something.

``python run_recbole_mind.py --explain --checkpoint saved/MIND-....pth [--users 1,2,3] [--output_dir DIR]``

- per user (RecBole external user ids): a heat map of the routing weights from each behaviour of
  the user's test row to each active interest, rows labelled with the items' titles and genres
  where the dataset's .item file has them, and the top items each interest retrieves;
- capsule health over all users' test rows: K'_u, the mean pairwise cosine between one user's
  active interests (collapse shows as cosine near 1), interest norms, which interest wins the
  max for the test item, and how sharp the routing is;
- interest purity: each behaviour goes to its argmax-weight interest, and the share of the
  majority label among an interest's behaviours is compared with a random assignment of the
  same group sizes (a per-user permutation of the assignment, several draws). Labels are the
  item genres where the dataset has them and item co-occurrence clusters (spectral
  co-clustering of the user-item matrix, then k-means) everywhere.

Python API: :func:`load_explainer` -> :class:`Explainer`; ``explain_user``, ``capsule_health``,
``routing_purity``, ``genre_labels``, ``cooccurrence_labels``, ``plot_user``, ``plot_health``.
"""

import os
import textwrap

import numpy as np
import torch
import torch.nn.functional as F

from recbole_mind.categories import (CLUSTER_DIM, CLUSTERS, GENRE_FIELDS, cluster_labels, cooccurrence_clusters,
                                     item_header, token_labels)
from recbole_mind.checkpoint import restore
from recbole_mind.errors import UserError
from recbole_mind.files import write_json_atomic
from recbole_mind.model.layers import mean_pairwise_cosine
from recbole_mind.model.scoring import active_first

# .item columns used as titles when the dataset has them (ml-100k: movie_title).
TITLE_FIELDS = ("movie_title", "title")
TOP_ITEMS = 5  # items listed per interest
PURITY_DRAWS = 20  # permutation baseline draws


# ----------------------------------------------------------------------------- loading
def _pick(header, wanted, candidates):
    if wanted is not None:
        if wanted not in header:
            raise UserError(f"the dataset's .item file has no field '{wanted}': use one of {', '.join(header) or 'none'}")
        return wanted
    return next((field for field in candidates if field in header), None)


def load_explainer(path, data_path=None, title_field=None, genre_field=None):
    """An :class:`Explainer` of the MIND checkpoint at ``path``, its dataset loaded again with the
    .item title and genre fields (auto-detected from TITLE_FIELDS / GENRE_FIELDS unless named)."""
    picked = {}

    def label_fields(config):  # the .item header of the data the checkpoint is rebuilt on
        header = item_header(config["data_path"], config["dataset"], config["field_separator"] or "\t",
                             config["encoding"] or "utf-8")
        picked.update(title=_pick(header, title_field, TITLE_FIELDS), genre=_pick(header, genre_field, GENRE_FIELDS))
        return [f for f in picked.values() if f]

    restored = restore(path, "MIND", data_path, label_fields, purpose="--explain")
    return Explainer(restored.model, restored.dataset, restored.test_data, picked["title"], picked["genre"],
                     config=restored.config)


# ----------------------------------------------------------------------------- the explainer
class Explainer:
    """A trained MIND with its dataset; every statistic uses each user's test row.

    Args:
        model: a MIND in eval mode (routing is deterministic there).
        dataset: the full RecBole dataset (item features, interactions for co-occurrence).
        test_data: RecBole's test dataloader (one row per user: history, length, test item).
        title_field, genre_field: .item fields for labels, or None.
        config: the RecBole config the dataset was built with (kept for callers).
    """

    def __init__(self, model, dataset, test_data, title_field=None, genre_field=None, config=None):
        self.model = model.eval()
        self.config = config
        self.dataset = dataset
        self.test_data = test_data  # RecBole's loader, kept for callers (bench/recency_eval.py)
        self.title_field = title_field
        self.genre_field = genre_field
        self.uid_field = dataset.uid_field
        self.clusters = None  # [n_items] co-occurrence cluster, set by cooccurrence_labels
        self.rows = self._test_rows(test_data)
        self._routed = None

    def with_model(self, model):
        """The same data explained with another MIND built for it (e.g. an untrained one)."""
        other = Explainer.__new__(Explainer)
        other.__dict__.update(self.__dict__, model=model.eval(), _routed=None)
        return other

    def _test_rows(self, test_data):
        m = self.model
        fields = (self.uid_field, m.ITEM_SEQ, m.ITEM_SEQ_LEN, m.POS_ITEM_ID)
        parts = {f: [] for f in fields}
        for batch in test_data:
            for f in fields:
                parts[f].append(batch[0][f])
        return {f: torch.cat(parts[f]) for f in fields}

    # ------------------------------------------------------------------ routing
    @torch.no_grad()
    def route(self, index=None, batch_size=4096):
        """Routing outputs for the test rows ``index`` (all when None).

        Returns a dict of tensors: user, items [B, L], length [B], target [B], interests
        [B, K, d], capsules [B, K, d] (routing output before the tower H), mask [B, K] and
        weights [B, L, K].
        """
        if index is None and self._routed is not None:
            return self._routed
        m = self.model
        rows = {f: v if index is None else v[index] for f, v in self.rows.items()}
        out = {k: [] for k in ("interests", "capsules", "mask", "weights")}
        for start in range(0, len(rows[m.ITEM_SEQ]), batch_size):
            seq = rows[m.ITEM_SEQ][start:start + batch_size]
            length = rows[m.ITEM_SEQ_LEN][start:start + batch_size]
            user = rows[self.uid_field][start:start + batch_size]
            interests, mask, weights, capsules = m.routing_details(seq, length, user)
            for k, v in zip(out, (interests, capsules, mask, weights)):
                out[k].append(v)
        routed = {k: torch.cat(v) for k, v in out.items()}
        routed.update(user=rows[self.uid_field], items=rows[m.ITEM_SEQ],
                      length=rows[m.ITEM_SEQ_LEN], target=rows[m.POS_ITEM_ID])
        if index is None:
            self._routed = routed
        return routed

    def assignment(self, routed):
        """[B, L] index of each behaviour's argmax-weight interest (inactive interests weigh 0)."""
        return routed["weights"].argmax(dim=-1)

    # ------------------------------------------------------------------ labels
    def item_names(self, items):
        """Display names 'title [genre|genre]' (the item token where there is no title); without
        genres, 'item (cluster c)' once :meth:`cooccurrence_labels` has clustered the items."""
        names = []
        for item in items.tolist():
            title = self._tokens(self.title_field, item, " ") or str(self.dataset.id2token(self.dataset.iid_field, item))
            genres = self._tokens(self.genre_field, item, "|")
            if not genres and self.genre_field is None and self.clusters is not None and self.clusters[item] >= 0:
                title = f"{title} (cluster {self.clusters[item]})"
            names.append(f"{title} [{genres}]" if genres else title)
        return names

    def _tokens(self, field, item, sep):
        if field is None:
            return ""
        value = self.dataset.get_item_feature()[field][item]
        ids = value.reshape(-1).tolist()
        tokens = self.dataset.field2id_token[field]
        return sep.join(str(tokens[i]) for i in ids if i > 0)

    def genre_labels(self):
        """[n_items, n_genres] genre shares, or None without a genre field.

        A movie with g genres gives 1/g of itself to each (fractional counting), so every
        behaviour weighs 1 whatever its genre count; an item without genres weighs 0.
        """
        if self.genre_field is None:
            return None
        return token_labels(self.dataset.get_item_feature()[self.genre_field],
                            len(self.dataset.field2id_token[self.genre_field]))

    def cooccurrence_labels(self, clusters=CLUSTERS, dim=CLUSTER_DIM, seed=0):
        """[n_items, clusters] one-hot co-occurrence cluster of every item (0 rows: no data)."""
        inter = self.dataset.inter_feat
        cluster = cooccurrence_clusters(inter[self.uid_field].numpy(), inter[self.dataset.iid_field].numpy(),
                                        self.dataset.user_num, self.dataset.item_num, clusters, dim, seed)
        self.clusters = cluster
        return cluster_labels(cluster, clusters)

    # ------------------------------------------------------------------ one user
    def user_index(self, tokens):
        """Row indices of the external user ids ``tokens``; UserError names unknown ones."""
        tokens = [str(t).strip() for t in tokens]
        known = self.dataset.field2token_id[self.uid_field]
        unknown = [t for t in tokens if t not in known]
        if unknown:
            raise UserError(f"unknown user id(s) {', '.join(unknown)}: give RecBole external user ids from the .inter file")
        position = torch.full((self.dataset.user_num,), -1, dtype=torch.long)
        position[self.rows[self.uid_field]] = torch.arange(len(self.rows[self.uid_field]))
        index = position[torch.tensor([known[t] for t in tokens], dtype=torch.long)]
        missing = [t for t, i in zip(tokens, index.tolist()) if i < 0]
        if missing:
            held_out = self.config["eval_protocol"] == "multi_target"
            examples = ", ".join(self.dataset.id2token(self.uid_field, self.rows[self.uid_field][:3].tolist()))
            raise UserError(f"user id(s) {', '.join(missing)} have no test row"
                            + (" (under the multi-target protocol only the split's held-out test users have one)"
                               if held_out else "") + f": pick users with a test row, e.g. {examples}")
        return index

    @torch.no_grad()
    def explain_user(self, token, top=TOP_ITEMS):
        """Routing weights and per-interest top items of one user (external id ``token``).

        Returns a dict: user, behaviours (names, oldest first), weights [n, K'] (numpy), target
        (name), winner (the interest that scores the test item best), top (per active
        interest, a list of (name, score)); the user's own behaviours are not retrieved.
        """
        routed = self.route(self.user_index([token]))
        n = int(routed["length"][0])
        active = int(routed["mask"][0].sum())
        items = routed["items"][0, :n]
        item_emb = self.model.item_vectors()
        scores = routed["interests"][0, :active] @ item_emb.t()  # [K', n_items]
        scores[:, 0] = float("-inf")
        scores[:, items] = float("-inf")
        best = scores.topk(top, dim=-1)
        target_scores = routed["interests"][0, :active] @ item_emb[routed["target"][0]]
        return {
            "user": str(token),
            "behaviours": self.item_names(items),
            "weights": routed["weights"][0, :n, :active].numpy(),
            "target": self.item_names(routed["target"][:1])[0],
            "winner": int(target_scores.argmax()),
            "top": [list(zip(self.item_names(best.indices[j]), best.values[j].tolist())) for j in range(active)],
        }

    # ------------------------------------------------------------------ all users
    @torch.no_grad()
    def capsule_health(self):
        """Vectorised statistics over all users' test rows; see :func:`capsule_health`."""
        routed = self.route()
        health = capsule_health(routed, self.model.item_vectors(routed["target"]),
                                self.model.routing.eval_logits)
        health["top_overlap"] = top_item_overlap(routed, self.model.item_vectors()).numpy()
        health["split_cosine"] = random_split_cosine(self.model.item_vectors(routed["items"]),
                                                     routed["weights"].sum(dim=-1) > 0, routed["mask"]).numpy()
        return health

    @torch.no_grad()
    def purity(self, labels, draws=PURITY_DRAWS, seed=0):
        """:func:`routing_purity` of the argmax routing over users with >= 2 active interests."""
        routed = self.route()
        multi = routed["mask"].sum(dim=1) >= 2
        if not bool(multi.any()):
            return None  # one interest: every assignment is the same, purity equals its baseline
        items, assignment = routed["items"][multi], self.assignment(routed)[multi]
        window = self.model.behaviour_window
        if window and window < items.size(1):  # only the routed behaviours: the last w of each row
            length = routed["length"][multi]
            positions = self.model.window_positions(length)
            items, assignment = items.gather(1, positions), assignment.gather(1, positions)
            items = items * (torch.arange(window) < length.clamp(max=window).unsqueeze(1))
        return routing_purity(items, assignment, labels, routed["mask"].size(1), draws=draws, seed=seed)


# ----------------------------------------------------------------------------- statistics
def routing_purity(items, assignment, labels, interest_num, draws=PURITY_DRAWS, seed=0):
    """Label purity of the behaviours routed to each interest, against a permutation baseline.

    Args:
        items: [B, L] right-padded behaviour item ids (0 is padding).
        assignment: [B, L] interest of each behaviour (its argmax routing weight).
        labels: [n_items, G] label shares per item (rows sum to 1, or 0 for unlabelled items).
        interest_num: K.
        draws: permutation baseline draws; each shuffles the assignment among one user's own
            behaviours, which keeps every interest's group size.

    Returns:
        dict: ``purity`` (label mass of each (user, interest) group's majority label over all
        label mass, i.e. the group-size-weighted mean purity), ``baseline`` (its mean over the
        draws), ``baseline_std``, ``lift`` ((purity - baseline) / (1 - baseline)), ``groups``.
    """
    seq_mask = items > 0
    if not bool((seq_mask == (seq_mask.cumsum(dim=1) == torch.arange(1, items.size(1) + 1))).all()):
        raise ValueError("routing_purity needs right-padded sequences")
    label_rows = labels[items] * seq_mask.unsqueeze(-1)  # [B, L, G]

    def purity(assign):
        groups = F.one_hot(assign, interest_num).float() * seq_mask.unsqueeze(-1)  # [B, L, K]
        mass = torch.einsum("blk,blg->bkg", groups, label_rows)
        return float(mass.amax(dim=-1).sum() / mass.sum().clamp(min=1e-12))

    generator = torch.Generator().manual_seed(seed)
    baseline = []
    for _ in range(draws):  # a loop over draws; each draw is vectorised over users
        keys = torch.rand(items.shape, generator=generator).masked_fill(~seq_mask, 2.0)
        shuffled = assignment.gather(1, keys.argsort(dim=1))  # real positions come first
        baseline.append(purity(torch.where(seq_mask, shuffled, 0)))
    observed = purity(torch.where(seq_mask, assignment, 0))
    base = float(np.mean(baseline))
    groups = F.one_hot(torch.where(seq_mask, assignment, 0), interest_num).mul(seq_mask.unsqueeze(-1)).sum(1) > 0
    return {"purity": observed, "baseline": base, "baseline_std": float(np.std(baseline)),
            "lift": (observed - base) / max(1.0 - base, 1e-12), "groups": int(groups.sum()),
            "users": int(items.size(0)), "draws": draws}


def capsule_health(routed, target_emb, initial_logits=None):
    """Capsule statistics over users, all vectorised.

    Returns numpy arrays: ``active`` [B] (K'_u), ``cosine`` / ``capsule_cosine`` [B] (mean
    pairwise cosine between one user's active interests / routing capsules; NaN when K'_u = 1),
    ``norms`` [B, K] (NaN for inactive interests), ``winner`` [B] (interest scoring the test
    item best), ``max_weight`` [n behaviours] (each behaviour's largest routing weight), and
    with ``initial_logits`` [L, K] (the fixed evaluation draw) ``follows_init`` [n behaviours]:
    whether a behaviour's argmax interest is the argmax of its position's initial logit, i.e.
    whether routing only follows its random start (1/K'_u of behaviours by chance).
    """
    mask = routed["mask"]
    scores = torch.einsum("bkd,bd->bk", routed["interests"], target_emb).masked_fill(~mask, float("-inf"))
    # the behaviours routing saw, exactly those it gives weight (a softmax over at least one
    # active interest): with behaviour_window, not the older ones, which would count as weight 0
    # on interest 0
    seq_mask = routed["weights"].sum(dim=-1) > 0
    health = {
        "active": mask.sum(dim=1).numpy(),
        "cosine": mean_pairwise_cosine(routed["interests"], mask).numpy(),
        "capsule_cosine": mean_pairwise_cosine(routed["capsules"], mask).numpy(),
        "norms": routed["interests"].norm(dim=-1).masked_fill(~mask, float("nan")).numpy(),
        "winner": scores.argmax(dim=1).numpy(),
        "max_weight": routed["weights"].amax(dim=-1)[seq_mask].numpy(),
    }
    if initial_logits is not None:
        start = initial_logits[:seq_mask.size(1)].unsqueeze(0).masked_fill(~mask.unsqueeze(1), float("-inf"))
        follows = routed["weights"].argmax(dim=-1) == start.argmax(dim=-1)  # [B, L]
        health["follows_init"] = follows[seq_mask].numpy()
        health["follows_init_chance"] = (1.0 / mask.sum(dim=1, keepdim=True).float()).expand_as(follows)[seq_mask].numpy()
    return health


def group_mean_cosine(behaviour_emb, assignment, seq_mask, interest_mask):
    """[B] mean pairwise cosine of the mean vectors of a row's behaviour groups: behaviours
    ``behaviour_emb`` [B, L, d] where ``seq_mask`` [B, L], each in group ``assignment`` [B, L]
    (an active interest of ``interest_mask`` [B, K]); groups left empty take no part; NaN for a
    row with fewer than two groups."""
    groups = F.one_hot(assignment, interest_mask.size(1)).to(behaviour_emb.dtype) * seq_mask.unsqueeze(-1)
    means = torch.einsum("blk,bld->bkd", groups, behaviour_emb)
    return mean_pairwise_cosine(means, interest_mask & (groups.sum(dim=1) > 0))


def random_split_cosine(behaviour_emb, seq_mask, interest_mask, draws=5, seed=0):
    """[B] the interest cosine to expect if each of a row's active interests were the mean of a
    random share of its routed behaviours (each behaviour to one of the K'_u active interests,
    uniformly), averaged over ``draws``: how apart the user's own behaviours let interests be.
    NaN where a row has fewer than two groups in every draw."""
    generator = torch.Generator().manual_seed(seed)
    active = interest_mask.sum(dim=1, keepdim=True).clamp(min=1)
    slots = active_first(interest_mask)
    cosines = []
    for _ in range(draws):  # a loop over draws; each draw is vectorised over users
        pick = (torch.rand(seq_mask.shape, generator=generator) * active).long()  # [B, L] in [0, K'_u)
        cosines.append(group_mean_cosine(behaviour_emb, slots.gather(1, pick), seq_mask, interest_mask))
    return torch.stack(cosines).nanmean(dim=0)


def top_item_overlap(routed, item_emb, top=10, batch_size=1024):
    """[B] mean share of top-``top`` items that two active interests of a user both retrieve.

    Padding and the user's own behaviours are never retrieved; NaN when K'_u = 1. 1 means the
    interests retrieve the same items: collapse as the user sees it.
    """
    out = []
    for start in range(0, len(routed["items"]), batch_size):  # chunks bound the [b, K, n_items] scores
        interests = routed["interests"][start:start + batch_size]
        mask = routed["mask"][start:start + batch_size]
        scores = torch.einsum("bkd,nd->bkn", interests, item_emb)
        seen = torch.zeros(scores.size(0), scores.size(2), dtype=torch.bool)
        seen.scatter_(1, routed["items"][start:start + batch_size], True)
        seen[:, 0] = True
        best = scores.masked_fill(seen.unsqueeze(1), float("-inf")).topk(top, dim=-1).indices  # [b, K, top]
        shared = (best.unsqueeze(2).unsqueeze(-1) == best.unsqueeze(1).unsqueeze(-2)).any(-1).sum(-1) / top
        pair = (mask.unsqueeze(2) & mask.unsqueeze(1)).triu(diagonal=1)
        count = pair.sum(dim=(1, 2))
        out.append(torch.where(count > 0, (shared * pair).sum(dim=(1, 2)) / count.clamp(min=1), float("nan")))
    return torch.cat(out)


def health_summary(health):
    """Plain numbers from :func:`capsule_health` (for the console and summary.json)."""
    active, winner = health["active"], health["winner"]
    k = health["norms"].shape[1]
    multi = active >= 2
    return {
        "users": int(len(active)),
        "active_counts": {int(j): int((active == j).sum()) for j in range(1, k + 1)},
        "mean_cosine": float(np.nanmean(health["cosine"])) if multi.any() else None,
        "mean_capsule_cosine": float(np.nanmean(health["capsule_cosine"])) if multi.any() else None,
        "share_cosine_above_0.9": float((health["cosine"][multi] > 0.9).mean()) if multi.any() else None,
        "mean_top10_overlap": float(np.nanmean(health["top_overlap"])) if multi.any() and "top_overlap" in health
        else None,
        "mean_split_cosine": float(np.nanmean(health["split_cosine"][multi]))
        if "split_cosine" in health and np.isfinite(health["split_cosine"][multi]).any() else None,
        "mean_norm_by_interest": [float(np.nanmean(health["norms"][:, j])) if (active > j).any() else None
                                  for j in range(k)],
        "winner_share": [float((winner == j).mean()) for j in range(k)],
        "winner_share_if_uniform": [float(((active > j) / active).mean()) for j in range(k)],
        "mean_max_weight": float(health["max_weight"].mean()),
        "follows_init": float(health["follows_init"].mean()) if "follows_init" in health else None,
        "follows_init_chance": float(health["follows_init_chance"].mean()) if "follows_init" in health else None,
    }


# ----------------------------------------------------------------------------- pictures
def plot_user(explained, path):
    """Heat map of one user's routing weights plus the top items of every interest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = explained["weights"]
    n, active = weights.shape
    labels = [textwrap.shorten(name, 60) for name in explained["behaviours"]]
    lines = [f"test item: {textwrap.shorten(explained['target'], 55)}",
             f"  best scored by interest {explained['winner']}", ""]
    for j, retrieved in enumerate(explained["top"]):
        lines.append(f"interest {j} retrieves:")
        lines += [f"  {score:6.2f}  {textwrap.shorten(name, 55)}" for name, score in retrieved]
        lines.append("")
    body = max(0.24 * n, 0.125 * len(lines))  # inches: heat map rows, or the text if longer
    height = body + 1.55
    bottom, top = 1.1 / height, 0.45 / height  # fixed inches for the tick labels and the title
    fig = plt.figure(figsize=(13, height))
    rows = 0.24 * n / height
    heat = fig.add_axes([0.30, 1 - top - rows, 0.22, rows])  # top-aligned with the text
    image = heat.imshow(weights, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    heat.set_yticks(range(n), labels, fontsize=7)
    heat.set_xticks(range(active), [f"interest {j}" for j in range(active)], fontsize=8, rotation=30)
    heat.set_ylabel("behaviours, oldest first")
    heat.set_title(f"user {explained['user']}: routing weights", fontsize=10)
    for i in range(n):
        for j in range(active):
            heat.text(j, i, f"{weights[i, j]:.2f}", ha="center", va="center", fontsize=5.5,
                      color="white" if weights[i, j] < 0.6 else "black")
    fig.colorbar(image, ax=heat, fraction=0.08, pad=0.02)
    text = fig.add_axes([0.58, bottom, 0.41, 1 - bottom - top])
    text.axis("off")
    text.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=7.5)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_health(health, purities, path, title=""):
    """Capsule health over users (six panels) and the purity bars, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    active, k = health["active"], health["norms"].shape[1]
    fig, axes = plt.subplots(2, 4, figsize=(19, 8.5))
    ax = axes[0, 0]
    ax.bar(range(1, k + 1), [(active == j).sum() for j in range(1, k + 1)], color="tab:blue")
    ax.set(title="active interests K'_u", xlabel="K'_u", ylabel="users", xticks=range(1, k + 1))
    ax = axes[0, 1]
    multi = active >= 2
    if multi.any():
        bins = np.linspace(-1, 1, 41)
        ax.hist(health["cosine"][multi], bins=bins, alpha=0.7, label="interests v (after H)")
        ax.hist(health["capsule_cosine"][multi], bins=bins, alpha=0.7, label="capsules u (routing)")
        if "split_cosine" in health:
            ax.hist(health["split_cosine"][multi], bins=bins, alpha=0.5, histtype="step", linewidth=1.5,
                    color="black", label="random shares of the behaviours")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "one interest per user:\nno pairs", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="mean pairwise cosine per user (1 = collapse)", xlabel="cosine", ylabel="users")
    ax = axes[0, 2]
    norms = [health["norms"][:, j][~np.isnan(health["norms"][:, j])] for j in range(k)]
    ax.boxplot([v if len(v) else [np.nan] for v in norms], showfliers=False)
    ax.set_xticks(range(1, k + 1), [str(j) for j in range(k)])
    ax.set(title="interest norms |v_u^j|", xlabel="interest index j", ylabel="norm")
    ax = axes[1, 0]
    summary = health_summary(health)
    x = np.arange(k)
    ax.bar(x - 0.2, summary["winner_share"], width=0.4, label="observed")
    ax.bar(x + 0.2, summary["winner_share_if_uniform"], width=0.4, label="if every active one were equal")
    ax.set(title="which interest scores the test item best", xlabel="interest index j",
           ylabel="share of users", xticks=x)
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    ax.hist(health["max_weight"], bins=np.linspace(0, 1, 41), color="tab:green")
    ax.set(title="largest routing weight of each behaviour", xlabel="max_j w_ij", ylabel="behaviours")
    ax = axes[0, 3]
    if multi.any() and "top_overlap" in health:
        ax.hist(health["top_overlap"][multi], bins=np.linspace(0, 1, 21), color="tab:purple")
    else:
        ax.text(0.5, 0.5, "one interest per user:\nno pairs", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="top-10 items two interests share (1 = collapse)", xlabel="shared share", ylabel="users")
    ax = axes[1, 3]
    if summary["follows_init"] is not None:
        ax.bar([0, 1], [summary["follows_init"], summary["follows_init_chance"]], color=["tab:red", "tab:gray"])
        ax.set_xticks([0, 1], ["observed", "chance (1/K'_u)"])
        ax.set_ylim(0, 1)
    ax.set(title="behaviours routed where the fixed\nrandom start logits point", ylabel="share of behaviours")
    ax = axes[1, 2]
    names = [name for name, result in purities.items() if result is not None]
    if names:
        x = np.arange(len(names))
        ax.bar(x - 0.2, [purities[n]["purity"] for n in names], width=0.4, label="argmax routing")
        ax.bar(x + 0.2, [purities[n]["baseline"] for n in names], width=0.4,
               yerr=[purities[n]["baseline_std"] for n in names], label="random, same group sizes")
        ax.set_xticks(x, names)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "one interest per user:\npurity = baseline", ha="center", va="center",
                transform=ax.transAxes)
    ax.set(title="label purity of each interest's behaviours", ylabel="purity")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- report
def interest_health(model, dataset, eval_data, genre_field=None):
    """The interest-health figures reported beside accuracy: mean pairwise cosine of a user's
    interests (and, for reference, of interests that were random shares of the same behaviours),
    top-10 items two interests share, share of behaviours that follow their start
    logit (and its chance level), and the purity lift of each interest's behaviours (genres
    where ``genre_field`` is loaded, co-occurrence clusters always), over ``eval_data``'s rows."""
    explainer = Explainer(model, dataset, eval_data, genre_field=genre_field)
    summary = health_summary(explainer.capsule_health())
    health = {key: summary[key] for key in ("mean_cosine", "mean_split_cosine", "mean_top10_overlap",
                                            "follows_init", "follows_init_chance")}
    genres = explainer.genre_labels()
    purities = {"cooccurrence": explainer.purity(explainer.cooccurrence_labels())}
    if genres is not None:
        purities["genre"] = explainer.purity(genres)
    for name, purity in purities.items():
        health[f"purity_lift_{name}"] = None if purity is None else purity["lift"]
    return health


def explain_all(explainer, output_dir, users=()):
    """Every picture and number for ``explainer`` into ``output_dir``; returns the summary dict."""
    written = []
    purities = {}
    genres = explainer.genre_labels()
    if genres is not None:
        purities["genre"] = explainer.purity(genres)
    purities["co-occurrence cluster"] = explainer.purity(explainer.cooccurrence_labels())
    for token in users:  # after the clustering: items without genres are labelled by cluster
        path = os.path.join(output_dir, f"user_{token}.png")
        plot_user(explainer.explain_user(token), path)
        written.append(path)
    health = explainer.capsule_health()
    m = explainer.model
    title = (f"MIND on {explainer.dataset.dataset_name}: K={m.interest_num}, "
             f"dynamic_interest={m.dynamic_interest}, R={m.routing.iterations} routing iterations, "
             f"softmax over {m.routing.softmax_axis}")
    path = os.path.join(output_dir, "capsule_health.png")
    plot_health(health, purities, path, title)
    written.append(path)
    report = {"title": title, "health": health_summary(health), "purity": purities, "files": written}
    write_json_atomic(os.path.join(output_dir, "summary.json"), report)
    return report


def format_report(report):
    h = report["health"]

    def num(value):
        return "n/a" if value is None else f"{value:.3f}"

    lines = [report["title"],
             f"users: {h['users']}  K'_u counts: {h['active_counts']}",
             f"mean pairwise cosine of interests: {num(h['mean_cosine'])} (capsules {num(h['mean_capsule_cosine'])}),"
             f" share of users above 0.9: {num(h['share_cosine_above_0.9'])}",
             f"the same for interests that were each a random share of the behaviours: {num(h.get('mean_split_cosine'))}",
             f"top-10 items shared by two interests of a user: {num(h['mean_top10_overlap'])}",
             "mean norm by interest: " + ", ".join(num(v) for v in h["mean_norm_by_interest"]),
             "test item best scored by interest: " + ", ".join(f"{v:.3f}" for v in h["winner_share"])
             + "  (uniform: " + ", ".join(f"{v:.3f}" for v in h["winner_share_if_uniform"]) + ")",
             f"mean largest routing weight per behaviour: {h['mean_max_weight']:.3f}",
             f"behaviours routed as their fixed initial logits say: {num(h['follows_init'])}"
             f" (chance {num(h['follows_init_chance'])})"]
    for name, p in report["purity"].items():
        lines.append(f"{name} purity: n/a (one interest per user)" if p is None else
                     f"{name} purity: {p['purity']:.3f} vs random {p['baseline']:.3f} +- {p['baseline_std']:.3f}"
                     f" (lift {p['lift']:.3f}, {p['users']} users, {p['groups']} groups)")
    lines += [f"wrote {path}" for path in report["files"]]
    return "\n".join(lines)
