"""recbole-mind: MIND (Multi-Interest Network with Dynamic Routing) for RecBole 1.2.1.

Importing the package applies the stack fixes in :mod:`recbole_mind.compat` once, so RecBole's
own ``Config(model=MIND, ...)``, ``create_dataset``, ``data_preparation`` and ``Trainer`` work.
"""

from recbole_mind import compat

compat.apply()

from recbole_mind import properties  # noqa: E402
from recbole_mind.model import MIND  # noqa: E402
from recbole_mind.version import __version__  # noqa: E402


def config_files():
    """The yaml files a RecBole ``Config`` for MIND should load: the run protocol, then MIND's
    defaults (``[run.yaml, MIND.yaml]``)."""
    return [str(properties.RUN), str(properties.MIND)]


__all__ = ["MIND", "config_files", "__version__"]
