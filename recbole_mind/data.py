"""The dataset of a run: fetched if RecBole knows it, checked, then loaded by RecBole."""

from recbole.data import create_dataset, data_preparation

from recbole_mind import multi_target
from recbole_mind.checks import check_dataset_files
from recbole_mind.download import ensure_dataset
from recbole_mind.model import MIND
from recbole_mind.model.hyper_parameters import read_hyper_parameters


def check_data(config):
    """Download the dataset if needed and check its atomic files (UserError if unusable)."""
    ensure_dataset(config["dataset"], config["data_path"], url=config["dataset_url"],
                   timeout=config["download_timeout"] or 30, show_progress=bool(config["show_progress"]))
    features = None
    model_class = getattr(config, "model_class", None)
    if isinstance(model_class, type) and issubclass(model_class, MIND):
        hp = read_hyper_parameters(config)
        features = {"user": hp.user_features, "item": hp.item_features}
    check_dataset_files(config, features)


def load_data(config):
    """(dataset, train, valid, test) loaders of the run's protocol: RecBole's create_dataset and
    data_preparation for leave-one-out; :func:`multi_target.prepare` for multi_target, whose
    test loader also carries ``split`` (the user split as recorded)."""
    if config["eval_protocol"] == multi_target.NAME:
        prepared = multi_target.prepare(config)
        prepared.test_data.split = prepared.split
        return prepared.dataset, prepared.train_data, prepared.valid_data, prepared.test_data
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    return dataset, train_data, valid_data, test_data


def prepare_data(config):
    """:func:`check_data`, then :func:`load_data`."""
    check_data(config)
    return load_data(config)
