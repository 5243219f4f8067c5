"""The exported user tower computes the eager model's interests and mask, deterministically."""

import os

import pytest
import torch

from recbole_mind import checkpoint, cli, histories, train
from recbole_mind.export import load_user_tower


def test_exported_tower_equals_the_eager_model(tiny_config, tmp_path):
    # user profile features make the user id a real input of the tower
    # and dynamic K (the paper's rule) gives short rows inactive interests, which must export as zeros
    tiny_config.update({"user_features": ["age", "gender"], "item_features": ["genre"], "dynamic_interest": True})
    result = train.run("MIND", "tiny", config_dict=tiny_config)
    path = str(tmp_path / "tower.pt2")
    assert cli.main(["--export", path, "--checkpoint", result["saved_model_file"]]) == 0
    assert os.path.isfile(path) and not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]

    restored = checkpoint.restore(result["saved_model_file"])
    dataset, model = restored.dataset, restored.model
    users, item_seq, item_seq_len, _ = histories.user_histories(dataset, model.max_seq_length)
    inputs = (torch.as_tensor(item_seq), torch.as_tensor(item_seq_len), torch.as_tensor(users))
    tower = load_user_tower(path)
    with torch.no_grad():
        eager = model(*inputs)
        exported = tower(*inputs)  # all users: not the batch size it was exported with
        again = tower(*inputs)
        single = tower(*(x[:1] for x in inputs))
        other_user = tower(inputs[0][:1], inputs[1][:1], inputs[2][1:2])
    assert eager[1].dtype == exported[1].dtype == torch.bool
    assert torch.equal(exported[1], eager[1])
    torch.testing.assert_close(exported[0], eager[0], rtol=0, atol=1e-6)
    assert torch.equal(again[0], exported[0]) and torch.equal(again[1], exported[1])
    torch.testing.assert_close(single[0], eager[0][:1], rtol=0, atol=1e-6)
    assert not torch.allclose(other_user[0], single[0])  # the profile (user id) is used
    assert (~eager[1]).any() and torch.all(exported[0][~exported[1]] == 0)


def test_export_needs_a_checkpoint(tmp_path, capsys):
    assert cli.main(["--export", str(tmp_path / "t.pt2")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "t.pt2")


@pytest.mark.parametrize("flag", ["--epochs=3", "--MAX_ITEM_LIST_LENGTH=5"])
def test_export_refuses_model_overrides(tmp_path, capsys, flag):
    assert cli.main(["--export", str(tmp_path / "t.pt2"), "--checkpoint", "x.pth", flag]) == 2
    assert "cannot change a trained model" in capsys.readouterr().err
