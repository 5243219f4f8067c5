"""The yaml files recbole-mind ships: the run protocols, MIND's defaults, the paper's model and
the hyper-parameter search spaces."""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
RUN = FOLDER / "run.yaml"
MIND = FOLDER / "MIND.yaml"
MIND_PAPER = FOLDER / "MIND-paper.yaml"
MULTI_TARGET = FOLDER / "multi_target.yaml"
MIND_MULTI_TARGET = FOLDER / "MIND-multi_target.yaml"  # MIND's preset for that protocol
HYPER = FOLDER / "hyper"
