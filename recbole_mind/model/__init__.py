"""MIND and its parts: the model (mind.py), its layers, losses, serving scores and hyper-parameters."""

from recbole_mind.model.mind import MIND

__all__ = ["MIND"]
