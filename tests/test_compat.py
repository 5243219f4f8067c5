"""One test per stack fix in recbole_mind/compat.py; each fails on this stack without its fix."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from recbole_mind.config import build_config
from recbole_mind.data import prepare_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code):
    """Run code in a fresh interpreter (import-time effects cannot be undone in this one)."""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_numpy_aliases_let_recbole_config_and_metrics_run(tiny_config):
    # Config.compatibility_settings reads np.float_ (gone in numpy 2); metrics use np.float.
    config = build_config("MIND", "tiny", config_dict=tiny_config)
    assert config["model"] == "MIND"
    assert np.float_ is np.float64 and np.bool8 is np.bool_ and np.unicode_ is np.str_
    from recbole.evaluator.metrics import NDCG

    ndcg = NDCG(config).metric_info(np.array([[True, False]]), np.array([1]))
    assert np.isfinite(ndcg).all()


def test_importing_plugin_and_recbole_models_leaves_anomaly_detection_off():
    # sine.py switches torch.autograd.set_detect_anomaly(True) on when imported.
    out = _python(
        "import recbole_mind, torch\n"
        "from recbole.utils import get_model\n"
        "get_model('SINE'); get_model('SASRec')\n"
        "print(torch.is_anomaly_enabled())"
    )
    assert out == "False"


def test_trainer_reloads_its_best_checkpoint(tiny_config):
    # torch >= 2.6 loads weights_only by default and RecBole's checkpoint pickles the Config.
    from recbole.utils import get_trainer

    from recbole_mind import MIND

    config = build_config("MIND", "tiny", config_dict=tiny_config)
    _, train, valid, test = prepare_data(config)
    model = MIND(config, train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.fit(train, valid, saved=True, show_progress=False)
    result = trainer.evaluate(test, load_best_model=True)
    assert set(result) >= {"ndcg@10", "recall@10"}
    trainer.resume_checkpoint(trainer.saved_model_file)
    assert trainer.start_epoch == 1


def test_torch_load_stays_safe_outside_the_trainer(tmp_path):
    # The weights_only=False fix is scoped to recbole.trainer.trainer, not the process.
    import pickle

    path = tmp_path / "object.pth"
    torch.save({"x": {1, 2}, "f": np.float64}, path)  # a numpy type is not an allowed global
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)


def _dataset_with_gaps(root):
    folder = os.path.join(root, "gaps")
    os.makedirs(folder)
    with open(os.path.join(folder, "gaps.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u in range(1, 9):
            for t, i in enumerate([1, 2, 3, 4, 5]):
                f.write(f"{u}\t{(i + u) % 6 + 1}\t{t}\n")
    with open(os.path.join(folder, "gaps.user"), "w") as f:
        f.write("user_id:token\tage:token\n")
        for u in range(1, 9):
            f.write(f"{u}\t{'' if u % 3 == 0 else 20 + u}\n")  # some users lack an age
    with open(os.path.join(folder, "gaps.item"), "w") as f:
        f.write("item_id:token\tgenre:token_seq\n")
        for i in range(1, 8):
            f.write(f"{i}\t{'' if i % 2 else 'a b' if i % 4 else 'c'}\n")  # some items lack genres
    return root


def test_pandas_fill_nan_and_sequence_remap(tmp_path):
    # pandas 3: chained fillna(inplace=True) is a no-op (NaN stays in .user/.item, empty token
    # sequences crash _load_feat) and Series.agg(len) no longer measures each cell (_remap).
    root = _dataset_with_gaps(str(tmp_path))
    config = build_config("MIND", "gaps", config_dict={
        "data_path": root, "state": "ERROR", "user_features": ["age"], "item_features": ["genre"],
        "topk": [3], "valid_metric": "NDCG@3",
    })
    dataset, *_ = prepare_data(config)
    ages = dataset.get_user_feature()["age"]
    assert not torch.isnan(ages.float()).any()
    assert 0 <= int(ages.min()) and int(ages.max()) < dataset.num("age")
    id2token = dataset.field2id_token
    for user_token in ["3", "6"]:  # blank age -> padding id 0
        assert int(ages[dataset.token2id("user_id", user_token)]) == 0
    genres = dataset.get_item_feature()["genre"]
    expected = {i: ([] if i % 2 else ["a", "b"] if i % 4 else ["c"]) for i in range(1, 8)}
    for token, wanted in expected.items():
        row = genres[dataset.token2id("item_id", str(token))]
        assert [id2token["genre"][g] for g in row.tolist() if g] == wanted


def test_item_coverage_metric_runs(tiny_config):
    """RecBole's Collector moved every collected value with .cpu(), the plain-int catalogue size
    of ItemCoverage included (compat._collector_keeps_plain_numbers)."""
    from recbole_mind.train import run

    result = run("MIND", "tiny", config_dict={**tiny_config, "metrics": ["Recall", "ItemCoverage"],
                                              "valid_metric": "Recall@10"})
    assert 0 < result["test_result"]["itemcoverage@10"] <= 1
