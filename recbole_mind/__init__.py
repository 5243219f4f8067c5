"""recbole-mind: MIND (Multi-Interest Network with Dynamic Routing) for RecBole 1.2.1.

Importing the package applies the stack fixes in :mod:`recbole_mind.compat` once, so RecBole's
own ``Config(model=MIND, ...)``, ``create_dataset``, ``data_preparation`` and ``Trainer`` work.
"""

from recbole_mind import compat

compat.apply()

from recbole_mind.mind import MIND, default_config, properties_dir  # noqa: E402
from recbole_mind.routing import B2IRouting  # noqa: E402


def config_files():
    """The yaml files a RecBole ``Config`` for MIND should load: ``[properties/MIND.yaml]``."""
    return [str(properties_dir() / "MIND.yaml")]


__all__ = ["MIND", "B2IRouting", "config_files", "default_config", "properties_dir"]
__version__ = "0.1.0"
