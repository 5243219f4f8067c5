"""bench/cosine_baselines.py: RecBole's SASRec / GRU4Rec scored by cosines (the control for
MIND's normalize_vectors)."""

from argparse import Namespace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from recbole.utils import init_seed

from bench.cosine_baselines import MODELS, evaluate_checkpoint, recbole_properties
from bench.mind_experiments import run_one
from recbole_mind.errors import UserError
from recbole_mind.config import build_config
from recbole_mind.data import prepare_data


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cosine_baseline_scores_cosines_and_trains_on_them_over_the_temperature(tiny_config, name):
    config = build_config(MODELS[name], "tiny", config_files=[recbole_properties(name)],
                          config_dict={**tiny_config, "hidden_size": 16, "cosine_temperature": 0.2})
    init_seed(config["seed"], True)
    _, train_data, _, _ = prepare_data(config)
    model = MODELS[name](config, train_data._dataset).eval()
    batch = next(iter(train_data))
    with torch.no_grad():
        sequence = model.forward(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
        cosines = F.normalize(sequence, dim=-1) @ F.normalize(model.item_embedding.weight, dim=-1).t()
        torch.testing.assert_close(model.full_sort_predict(batch), cosines)
        labels = batch[model.POS_ITEM_ID]
        expected = F.cross_entropy(cosines / 0.2, labels)
        torch.testing.assert_close(model.calculate_loss(batch), expected)
        batch[model.ITEM_ID] = labels
        torch.testing.assert_close(model.predict(batch), cosines[torch.arange(len(labels)), labels])


def test_a_runs_best_checkpoint_tests_as_the_run_did(tiny_config):
    """--test_checkpoint (for a run still training) gives the finished run's own test figures
    from its best checkpoint, and refuses settings other than the checkpoint's."""
    args = Namespace(tag="t", model="SASRec", dataset="tiny", threads=1, epochs_done=3)
    overrides = {**tiny_config, "hidden_size": 16, "epochs": 3, "cosine_temperature": 0.2}
    finished = run_one(args, overrides, model=MODELS["SASRec"], config_files=[recbole_properties("SASRec")])
    (path,) = Path(tiny_config["checkpoint_dir"]).glob("SASRecCosine-*.pth")
    partial = evaluate_checkpoint(args, overrides, str(path))
    assert partial["test"] == pytest.approx(finished["test"])
    assert partial["best_epoch"] == finished["best_epoch"]
    assert partial["valid"]["ndcg@10"] == pytest.approx(finished["valid"]["ndcg@10"])
    assert partial["test_history_excluded"] != partial["test"]  # the second evaluation filters
    with pytest.raises(UserError, match=r"cosine_temperature 0.2 \(given: 0.1\)"):
        evaluate_checkpoint(args, {**overrides, "cosine_temperature": 0.1}, str(path))
