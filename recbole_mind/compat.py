"""Every workaround recbole-mind needs to run RecBole 1.2.1 on numpy 2, pandas 3, torch >= 2.6 and
hyperopt 0.2.5 with setuptools >= 81, and to run its distributed (DDP) path on a CPU, applied once.

RecBole 1.2.1 was released against numpy 1.x, pandas 1.x/2.x and torch < 2.6, and its DDP path
only works with CUDA and NCCL. Each fix below names the break it mends; ``tests/test_compat.py``
and ``tests/test_distributed.py`` have a test per fix that fails without it.
``apply()`` is idempotent and runs when ``recbole_mind`` is imported.
"""

import types

import numpy as np
import pandas as pd
import torch

_APPLIED = False


class _ModuleProxy(types.ModuleType):
    """A stand-in for a module inside one RecBole module's namespace.

    Attribute look-ups fall through to the real module except the overridden names, so a fix
    reaches only the RecBole code that calls through this name, not the rest of the process.
    """

    def __init__(self, module, **overrides):
        super().__init__(module.__name__)
        self._module = module
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._module, name)


def _numpy_aliases():
    # Break: numpy 2 removed np.float_, np.complex_, np.unicode_ (and 1.24 removed np.float,
    # np.bool, ...). RecBole's Config.compatibility_settings() reads np.float_ etc. and raises
    # AttributeError in Config(); its metrics use np.float / np.bool, hyper_tuning np.str, and
    # ray 2.6.3 (recbole.quick_start) reads np.bool8. Restore the old names as the types they
    # always aliased; nothing in numpy 2 uses these names, so nothing else changes meaning.
    aliases = {
        "float_": np.float64,
        "complex_": np.complex128,
        "unicode_": np.str_,
        "bool8": np.bool_,
        "bool": np.bool_,
        "int": np.int_,
        "float": np.float64,
        "complex": np.complex128,
        "object": np.object_,
        "str": np.str_,
        "long": np.int_,
        "unicode": np.str_,
    }
    for name, value in aliases.items():
        if name not in np.__dict__:
            setattr(np, name, value)


def _anomaly_detection_off():
    # Break: recbole/model/sequential_recommender/sine.py calls
    # torch.autograd.set_detect_anomaly(True) at import time, and RecBole imports every
    # sequential model whenever one is looked up (get_model, Config). That slows every model's
    # training x1.6-1.8. Import the package now, once, and switch the flag back off.
    import recbole.model.sequential_recommender  # noqa: F401

    torch.autograd.set_detect_anomaly(False)


def _trusted_checkpoint_load():
    # Break: torch >= 2.6 defaults torch.load(weights_only=True); RecBole's checkpoints pickle
    # the whole Config, so Trainer.evaluate(load_best_model=True) and Trainer.resume_checkpoint
    # raise UnpicklingError. The trainer only loads the file it saved itself or one the user
    # named, so inside recbole.trainer.trainer alone torch.load is given weights_only=False.
    import recbole.trainer.trainer as trainer_module

    def load(f, *args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return torch.load(f, *args, **kwargs)

    trainer_module.torch = _ModuleProxy(torch, load=load)


def _pandas_copy_on_write():
    # Break: pandas 3 always copies on write, so RecBole's chained `df[col].fillna(...,
    # inplace=True)` updates a temporary and the frame keeps its NaN: Dataset._fill_nan leaves
    # NaN in .user/.item features (token NaN then becomes an out-of-range id), and _load_feat
    # splits NaN sequence cells and crashes. Also Series.agg(len) now measures the Series, not
    # each cell, so Dataset._remap splits token sequences (e.g. ml-100k's genres) wrongly.
    # The replacements do the same work without chained in-place updates; on pandas 2 they
    # give the same frames as RecBole's originals.
    from recbole.data.dataset import dataset as dataset_module
    from recbole.utils import FeatureType

    Dataset = dataset_module.Dataset

    def read_csv(*args, **kwargs):
        df = pd.read_csv(*args, **kwargs)
        for column in df.columns:  # headers are still "name:type" here
            if str(column).endswith("_seq"):
                df[column] = df[column].fillna("")
        return df

    dataset_module.pd = _ModuleProxy(pd, read_csv=read_csv)

    def _fill_nan(self):
        for feat_name in self.feat_name_list:
            feat = getattr(self, feat_name)
            for field in feat:
                ftype = self.field2type[field]
                if ftype == FeatureType.TOKEN:
                    feat[field] = feat[field].fillna(value=0)
                elif ftype == FeatureType.FLOAT:
                    feat[field] = feat[field].fillna(value=feat[field].mean())
                else:
                    dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                    feat[field] = feat[field].apply(
                        lambda x: np.array([], dtype=dtype) if isinstance(x, float) else x
                    )

    def _concat_remaped_tokens(self, remap_list):
        tokens = []
        for feat, field, ftype in remap_list:
            if ftype == FeatureType.TOKEN:
                tokens.append(np.asarray(feat[field].values))
            elif ftype == FeatureType.TOKEN_SEQ:
                cells = list(feat[field].values)
                tokens.append(np.concatenate(cells) if cells else np.array([], dtype=str))
        split_point = np.cumsum(list(map(len, tokens)))[:-1]
        return np.concatenate(tokens), split_point

    def _remap(self, remap_list):
        if len(remap_list) == 0:
            return
        tokens, split_point = self._concat_remaped_tokens(remap_list)
        new_ids_list, mp = pd.factorize(tokens)
        new_ids_list = np.split(new_ids_list + 1, split_point)
        mp = np.array(["[PAD]"] + list(mp))
        token_id = {t: i for i, t in enumerate(mp)}
        for (feat, field, ftype), new_ids in zip(remap_list, new_ids_list):
            if field not in self.field2id_token:
                self.field2id_token[field] = mp
                self.field2token_id[field] = token_id
            if ftype == FeatureType.TOKEN:
                feat[field] = new_ids
            elif ftype == FeatureType.TOKEN_SEQ:
                lengths = [len(cell) for cell in feat[field].values]
                feat[field] = pd.Series(
                    np.split(new_ids, np.cumsum(lengths)[:-1]), index=feat.index, dtype=object
                )

    Dataset._fill_nan = _fill_nan
    Dataset._concat_remaped_tokens = _concat_remaped_tokens
    Dataset._remap = _remap


def _quiet_known_warnings():
    # Not a break, noise: with the fixes above, pandas 3 still warns at each chained fillna
    # RecBole runs (now a no-op, its NaN already filled), and torch warns that RecBole builds
    # its GradScaler through the deprecated torch.cuda.amp. Each prints on every run.
    import warnings

    chained = getattr(pd.errors, "ChainedAssignmentError", None)
    if chained is not None:
        warnings.filterwarnings("ignore", category=chained, module=r"recbole\.")
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.GradScaler", category=FutureWarning)
    # RecBole turns read-only numpy arrays into tensors it never writes to.
    warnings.filterwarnings("ignore", message=r"The given NumPy array is not writable", category=UserWarning)


def _hyperopt_without_pkg_resources():
    # Break: hyperopt 0.2.5 (the version RecBole's HyperTuning needs) imports pkg_resources in
    # hyperopt/atpe.py at package import, and setuptools >= 81 no longer ships pkg_resources,
    # so `import hyperopt` (hence HyperTuning.run) raises ModuleNotFoundError. atpe only calls
    # pkg_resources.resource_string to read its bundled model files. Import hyperopt once with
    # a stand-in that does just that, then take the stand-in out of sys.modules, so no other
    # code sees a pkg_resources that is not there.
    import importlib.util
    import os
    import sys

    if importlib.util.find_spec("hyperopt") is None or importlib.util.find_spec("pkg_resources"):
        return

    def resource_string(module_name, resource_name):
        folder = os.path.dirname(sys.modules[module_name].__file__)
        with open(os.path.join(folder, resource_name), "rb") as f:
            return f.read()

    stand_in = types.ModuleType("pkg_resources")
    stand_in.resource_string = resource_string
    sys.modules["pkg_resources"] = stand_in
    try:
        import hyperopt  # noqa: F401
    finally:
        if sys.modules.get("pkg_resources") is stand_in:
            del sys.modules["pkg_resources"]


PER_ROW_KEYS = ("rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label")  # a collector's rows


def _collector_keeps_plain_numbers():
    # Break: RecBole's Collector.get_data_struct calls .cpu() on everything it collected, but
    # data_collect stores the catalogue size of ItemCoverage ("data.num_items") and
    # "data.num_users" as plain ints, so any run with the ItemCoverage metric fails with
    # AttributeError: 'int' object has no attribute 'cpu'. Move only tensors.
    import copy

    from recbole.evaluator.collector import Collector

    def get_data_struct(self):
        for key, value in self.data_struct._data_dict.items():
            if isinstance(value, torch.Tensor):
                self.data_struct._data_dict[key] = value.cpu()
        returned_struct = copy.deepcopy(self.data_struct)
        if not self.config["single_spec"]:  # DDP: every rank's rows (_gathered_evaluation)
            _gather_rows(returned_struct)
        for key in PER_ROW_KEYS:
            if key in self.data_struct:
                del self.data_struct[key]
        return returned_struct

    Collector.get_data_struct = get_data_struct


def _gather_rows(struct):
    """Replace each per-row entry of a collector's DataStruct by all ranks' rows, in rank order."""
    import torch.distributed as dist

    for key in PER_ROW_KEYS:
        if key in struct:
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, struct[key])
            struct.set(key, torch.cat(parts, dim=0))


def _distributed_device():
    # Break: Config._init_device, given a local_rank (RecBole's DDP path), hard-codes
    # init_process_group(backend="nccl"), torch.device("cuda", local_rank) and
    # torch.cuda.set_device, and asserts len(gpu_id) >= nproc: on a CPU no process group starts.
    # Choose the device as the single-process branch does (CUDA where gpu_id names one and it
    # exists), then nccl for CUDA and gloo for the CPU; start the group once per process (a
    # second Config in the same rank joins it), with a timeout so a lost rank cannot hang the
    # others forever; ranks other than global rank 0 log errors only. No local_rank: RecBole's own.
    from datetime import timedelta

    import torch.distributed as dist
    from recbole.config import configurator

    original = configurator.Config._init_device

    def _init_device(self):
        settings = self.final_config_dict
        if "local_rank" not in settings:
            return original(self)
        gpu_id = settings["gpu_id"]
        gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id)
        settings["gpu_id"] = gpu_id
        cuda = len(gpu_id) > 0 and torch.cuda.is_available()
        rank = settings["local_rank"] + (settings["offset"] or 0)
        if not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if cuda else "gloo", rank=rank, world_size=settings["world_size"],
                init_method=f"tcp://{settings['ip']}:{settings['port']}",
                timeout=timedelta(seconds=float(settings.get("ddp_timeout") or 300)))
        if cuda:
            torch.cuda.set_device(settings["local_rank"])
        settings["device"] = torch.device("cuda", settings["local_rank"]) if cuda else torch.device("cpu")
        settings["single_spec"] = False
        if rank != 0:
            settings["state"] = "error"
            settings["show_progress"] = False
            settings["verbose"] = False

    configurator.Config._init_device = _init_device


def _distributed_model_on_any_device():
    # Break: AbstractTrainer.__init__ wraps the model in DistributedDataParallel(model,
    # device_ids=[local_rank]); torch refuses device_ids for a CPU module ("device_ids ... only
    # work with single-device/multiple-device GPU modules"), so no CPU run gets past the trainer.
    # device_ids only for a CUDA model.
    from recbole.trainer.trainer import AbstractTrainer
    from torch.nn.parallel import DistributedDataParallel

    def __init__(self, config, model):
        self.config = config
        self.model = model
        if not config["single_spec"]:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            cuda = next(model.parameters()).device.type == "cuda"
            self.distributed_model = DistributedDataParallel(
                self.model, device_ids=[config["local_rank"]] if cuda else None)

    AbstractTrainer.__init__ = __init__


class UnpaddedShardSampler(torch.utils.data.Sampler):
    """Rows rank, rank + world_size, ... of n: every row on exactly one rank, none repeated."""

    def __init__(self, n, rank, world_size):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def _gathered_evaluation():
    # Break: under DDP every RecBole loader takes a DistributedSampler(drop_last=False), which
    # pads each rank's share with repeated rows, so evaluation counts some users twice; and
    # Trainer._map_reduce averages each rank's metrics weighted by len(batched_data) (the
    # length of a (interaction, ...) tuple, times batches), not by users (RecBole PR #1872,
    # unmerged). Evaluation loaders (the unshuffled ones) take an unpadded shard instead, the
    # collector gathers every rank's rows (_collector_keeps_plain_numbers), and the metrics are
    # computed once on all of them: exactly one process's. Training keeps RecBole's sampler.
    import torch.distributed as dist
    from recbole.data.dataloader.abstract_dataloader import AbstractDataLoader
    from recbole.trainer.trainer import Trainer

    original = AbstractDataLoader.__init__

    def __init__(self, config, dataset, sampler, shuffle=False):
        if config["single_spec"] or shuffle:
            return original(self, config, dataset, sampler, shuffle=shuffle)
        # RecBole's own steps, with the unpadded shard as the index sampler
        from recbole.data.transform import construct_transform
        from recbole.utils import ModelType

        self.shuffle = shuffle
        self.config = config
        self._dataset = dataset
        self._sampler = sampler
        self._batch_size = self.step = self.model = None
        self._init_batch_size_and_step()
        self.generator = torch.Generator()
        self.generator.manual_seed(config["seed"])
        self.transform = construct_transform(config)
        self.is_sequential = config["MODEL_TYPE"] == ModelType.SEQUENTIAL
        self.step = max(1, self.step // config["world_size"])
        torch.utils.data.DataLoader.__init__(
            self, dataset=list(range(self.sample_size)), batch_size=self.step, collate_fn=self.collate_fn,
            num_workers=config["worker"], shuffle=False,
            sampler=UnpaddedShardSampler(self.sample_size, dist.get_rank(), dist.get_world_size()),
            generator=self.generator)

    def _map_reduce(self, result, num_sample):
        return result  # computed on every rank's rows already

    AbstractDataLoader.__init__ = __init__
    Trainer._map_reduce = _map_reduce


def apply():
    """Apply every fix once; later calls do nothing."""
    global _APPLIED
    if _APPLIED:
        return
    _numpy_aliases()
    _anomaly_detection_off()
    _trusted_checkpoint_load()
    _pandas_copy_on_write()
    _quiet_known_warnings()
    _hyperopt_without_pkg_resources()
    _collector_keeps_plain_numbers()
    _distributed_device()
    _distributed_model_on_any_device()
    _gathered_evaluation()
    _APPLIED = True
