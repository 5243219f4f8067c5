"""RecBole's Config for MIND or a RecBole built-in, with the plugin's run protocol and yaml files."""

import contextlib
import sys

from recbole.config import Config
from recbole.utils import get_model

from recbole_mind import properties
from recbole_mind.categories import genre_field
from recbole_mind.checks import check_config_files, check_run_config
from recbole_mind.errors import UserError
from recbole_mind.model import MIND
from recbole_mind.model.hyper_parameters import read_hyper_parameters

DEFAULT_DATASET = "ml-100k"  # ships inside the recbole package: no download
PLUGIN_MODELS = {"MIND": MIND}
# Keys that say where files go or how much is printed, not what is trained or measured: a
# comparison's protocol, a resumed run's settings and a tuned configuration leave them out.
LOCATION_KEYS = frozenset({"data_path", "checkpoint_dir", "show_progress", "state", "log_wandb", "gpu_id", "ip", "port"})
PROTOCOLS = {"leave_one_out": None, "multi_target": properties.MULTI_TARGET}  # name -> its yaml on top of run.yaml


def resolve_model(model):
    """The model class for a name ('MIND' or a RecBole built-in) or a class given directly."""
    if not isinstance(model, str):
        return model
    if model in PLUGIN_MODELS:
        return PLUGIN_MODELS[model]
    try:
        return get_model(model)
    except (ValueError, ImportError):  # get_model walks into exlib_recommender (lightgbm, xgboost)
        raise UserError(
            f"unknown model '{model}': use MIND or a RecBole model name such as GRU4Rec, SASRec, SINE"
        ) from None


def config_file_list(model_class, extra_files=None, protocol=None):
    """run.yaml (shared protocol), the protocol's own yaml, MIND.yaml for MIND and its preset for
    the protocol (MIND-<protocol>.yaml, where one exists), then the user's files (last wins)."""
    files = [str(properties.RUN)] + ([str(PROTOCOLS[protocol])] if PROTOCOLS.get(protocol) else [])
    if model_class is MIND:
        files.append(str(properties.MIND))
        preset = properties.FOLDER / f"MIND-{protocol}.yaml"
        if protocol and preset.is_file():
            files.append(str(preset))
    extra_files = [str(path) for path in extra_files or []]
    check_config_files(extra_files)
    return files + extra_files


@contextlib.contextmanager
def _argv_hidden_from_recbole():
    """RecBole's Config also parses sys.argv; overrides here arrive through config_dict only."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def build_config(model="MIND", dataset=DEFAULT_DATASET, config_files=None, config_dict=None):
    """RecBole's Config for ``model`` on ``dataset`` with the plugin's run protocol."""
    model_class = resolve_model(model)

    def make(protocol=None):
        with _argv_hidden_from_recbole():
            return Config(model=model_class, dataset=dataset,
                          config_file_list=config_file_list(model_class, config_files, protocol),
                          config_dict=dict(config_dict or {}))

    config = make()
    protocol = config["eval_protocol"] or "leave_one_out"
    if protocol not in PROTOCOLS:
        raise UserError(f"eval_protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if PROTOCOLS[protocol]:  # the protocol's yaml goes under the user's files and overrides
        config = make(protocol)
    check_run_config(config)
    genres = genre_field(config) if protocol == "multi_target" else None
    if genres:  # categories for Diversity@N
        add_item_fields(config, [genres])
    if model_class is MIND:
        read_hyper_parameters(config)  # bad MIND keys fail now, not after loading the data
    _load_configured_features(config)
    return config


def _load_configured_features(config):
    """Add MIND's user_features / item_features to load_col, so configuring them is enough."""
    load_col = config["load_col"]
    if not isinstance(load_col, dict):
        return
    for source, key, id_field in (("user", "user_features", "USER_ID_FIELD"),
                                  ("item", "item_features", "ITEM_ID_FIELD")):
        fields = config[key] or []
        if fields:
            columns = list(load_col.get(source) or [config[id_field]])
            columns += [f for f in fields if f not in columns]
            load_col[source] = columns
    config["load_col"] = load_col


def add_item_fields(config, fields):
    """Load these .item fields too (e.g. titles and genres for explaining)."""
    load_col = dict(config["load_col"] or {})
    columns = list(load_col.get("item") or [config["ITEM_ID_FIELD"]])
    load_col["item"] = columns + [f for f in fields if f not in columns]
    config["load_col"] = load_col
