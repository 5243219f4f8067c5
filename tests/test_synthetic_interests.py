"""bench.synthetic_interests: users with a known number of separate interests."""

import numpy as np

from bench.synthetic_interests import histories, oracle_recall, write


def test_each_user_draws_from_exactly_their_own_clusters_without_repeats(tmp_path):
    rng = np.random.default_rng(0)
    rows = list(histories(rng, users=50, clusters=10, cluster_size=8, interests=3, min_length=5,
                          max_length=20, zipf=1.0))
    for items, own in rows:
        assert len(own) == len(set(own)) == 3 and 5 <= len(items) <= 20
        assert len(items) == len(set(items))
        assert {(item - 1) // 8 for item in items} <= set(own.tolist())
        assert all(1 <= item <= 80 for item in items)
    # with 20 items from 3 clusters, every user's history spans at least two of them
    assert all(len({(item - 1) // 8 for item in items}) >= 2 for items, _ in rows if len(items) > 8)
    folder = write(str(tmp_path), "synthetic", rows, clusters=10, cluster_size=8)
    inter = (tmp_path / "synthetic" / "synthetic.inter").read_text().splitlines()
    assert inter[0] == "user_id:token\titem_id:token\ttimestamp:float"
    assert len(inter) == 1 + sum(len(items) for items, _ in rows)
    genres = (tmp_path / "synthetic" / "synthetic.item").read_text().splitlines()
    assert genres[1] == "1\t0" and genres[-1] == "80\t9" and folder.endswith("synthetic")


def test_the_ceiling_ranks_the_users_clusters_by_popularity():
    popularity = np.array([3.0, 2.0, 1.0])  # three items a cluster, the first the most popular
    # clusters 0 (items 1-3) and 1 (4-6); items 4, 5, 2, 3 in (floor(0.8 * 5) = 4 of 5), target 6
    rows = [([4, 5, 2, 3, 6], np.array([0, 1]))]
    assert oracle_recall(rows, cluster_size=3, popularity=popularity, n=1) == 0.0  # item 1 ranks first
    assert oracle_recall(rows, cluster_size=3, popularity=popularity, n=2) == 1.0
    rows = [([1, 5, 6, 2, 4], np.array([0, 1]))]  # target 4, the most popular left (item 3 the other)
    assert oracle_recall(rows, cluster_size=3, popularity=popularity, n=1) == 1.0
