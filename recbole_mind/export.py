"""The export mode: MIND's user tower (item_seq, item_seq_len, user_id) -> (interests [B, K, d], mask [B, K]).

The exported program runs without this package or RecBole: ``torch.export.load(path).module()``
gives a callable module. ``torch.export`` is used because ``torch.jit.trace``/TorchScript is
deprecated in this torch, and ONNX would need the onnx packages. The batch dimension is
dynamic; the sequence length is fixed at the model's ``MAX_ITEM_LIST_LENGTH`` (right-pad with 0).
The tower runs in eval mode, so routing starts from the model's fixed logits and the same input
always gives the same interests.
"""

import torch
from torch import nn

from recbole_mind.files import atomic_write
from recbole_mind.histories import user_histories


class UserTower(nn.Module):
    """MIND's serving-time user side: interest vectors and the active-interest mask.

    ``user_id`` is always an input so that every exported tower has one signature; it is read
    only when the model uses user profile features.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model.eval()

    def forward(self, item_seq, item_seq_len, user_id):
        user = user_id if self.model.user_profile is not None else None
        # always the table path: MIND picks its path by batch size, which would put a guard
        # on the exported graph's dynamic batch dimension
        return self.model(item_seq, item_seq_len, user, table=self.model.item_vectors())


def example_inputs(model, dataset, batch_size=8):
    """A batch of real user histories from ``dataset`` (interaction-ordered, right-padded)."""
    users, item_seq, item_seq_len, _ = user_histories(dataset, model.max_seq_length)
    take = slice(0, max(2, min(batch_size, len(users))))
    return (torch.as_tensor(item_seq[take]), torch.as_tensor(item_seq_len[take]),
            torch.as_tensor(users[take]))


def export_user_tower(model, dataset, path):
    """Export the user tower of ``model`` to ``path`` (a torch.export ``.pt2`` archive), atomically.

    Returns:
        the exported program (``torch.export.ExportedProgram``).
    """
    tower = UserTower(model).eval()
    inputs = example_inputs(model, dataset)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(
            tower, inputs, dynamic_shapes=({0: batch}, {0: batch}, {0: batch}), strict=False,
        )
    atomic_write(path, lambda f: torch.export.save(program, f))
    return program


def load_user_tower(path):
    """The exported tower as a callable module (``torch.export.load``; no model code needed)."""
    return torch.export.load(path).module()
