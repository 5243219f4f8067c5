"""MIND's hyper-parameters: read once from a RecBole Config, converted and checked together."""

from types import SimpleNamespace

import torch
import yaml

from recbole_mind import properties
from recbole_mind.errors import UserError
from recbole_mind.repeats import parse_setting

LOSS_TYPES = ("CE", "SSM", "BPR")
SAMPLING_DISTRIBUTIONS = ("uniform", "popularity")
SOFTMAX_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}  # None: the model's own dtype
SOFTMAX_DTYPE_CHOICES = ("auto", *SOFTMAX_DTYPES)


def default_config():
    """MIND's defaults, as listed in properties/MIND.yaml."""
    with open(properties.MIND, encoding="utf-8") as f:
        return yaml.safe_load(f)


def native_bf16_matmul(device):
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a CUDA GPU with bf16 support,
    or a CPU with AVX512-BF16 or AMX (elsewhere torch emulates bf16 and it is no faster)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence getattr
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return False


def resolve_softmax_dtype(name, device):
    """``softmax_dtype`` as the model uses it: ``auto`` becomes bfloat16 where the hardware has
    bf16 matmuls (the same quality as float32, faster epochs: docs/model.md), float32 elsewhere."""
    if name != "auto":
        return name
    return "bfloat16" if native_bf16_matmul(device) else "float32"


def _boolean(value):
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, (bool, int)):
        return bool(value)
    raise ValueError(value)


def _names(value):
    return [str(v) for v in (value or [])] if not isinstance(value, str) else [value]


_boolean.__name__, _names.__name__ = "True or False", "a list of field names"

# key -> conversion; every key of MIND.yaml that the model reads
KEYS = {
    "embedding_size": int, "interest_num": int, "dynamic_interest": _boolean,
    "routing_iterations": int, "routing_init_std": float, "routing_init": str,
    "behaviour_window": int, "recency_gain": _boolean, "routing_softmax_axis": str,
    "routing_seed": int, "hidden_layers": int, "interest_residual": _boolean,
    "normalize_vectors": _boolean, "attention_power": float, "attention_sampling": _boolean, "temperature": float,
    "exclude_history": parse_setting, "softmax_dtype": str, "loss_type": str, "num_negatives": int,
    "sampling_distribution": str, "sampling_alpha": float, "user_features": _names,
    "item_features": _names, "interest_diversity": float, "routing_gradient": _boolean,
    "training_scores": str, "interest_merge": str,
}


def read_hyper_parameters(config):
    """MIND's keys from a RecBole Config (missing ones from MIND.yaml), converted and checked.

    Raises:
        UserError: one message listing every bad value and what it must be.
    """
    defaults = default_config()
    problems = []
    values = {}
    for key, convert in KEYS.items():
        value = config[key] if key in config else None
        value = defaults.get(key) if value is None else value
        try:
            values[key] = convert(value)
        except (TypeError, ValueError):
            problems.append(f"{key} must be {convert.__name__}, got {value!r}")
            values[key] = convert(defaults.get(key))
    hp = SimpleNamespace(**values)
    checks = (
        (hp.interest_num >= 1, f"interest_num must be >= 1, got {hp.interest_num}"),
        (hp.routing_iterations >= 1, f"routing_iterations must be >= 1, got {hp.routing_iterations}"),
        (hp.attention_power > 0, f"attention_power must be > 0 (inf for hard attention), got {hp.attention_power}"),
        (hp.embedding_size >= 1, f"embedding_size must be >= 1, got {hp.embedding_size}"),
        (hp.hidden_layers >= 1 or (hp.hidden_layers == 0 and not hp.user_features),
         f"hidden_layers must be >= 0, and >= 1 with user_features, got {hp.hidden_layers}"),
        (hp.routing_init_std > 0, f"routing_init_std must be > 0, got {hp.routing_init_std}"),
        (hp.behaviour_window >= 0, f"behaviour_window must be >= 0 (0: every behaviour), got {hp.behaviour_window}"),
        (hp.routing_init in ("random", "seeded"), f"routing_init must be random or seeded, got {hp.routing_init!r}"),
        (hp.routing_softmax_axis in ("interests", "behaviours"),
         f"routing_softmax_axis must be interests or behaviours, got {hp.routing_softmax_axis!r}"),
        (hp.interest_diversity >= 0, f"interest_diversity must be >= 0, got {hp.interest_diversity}"),
        (hp.interest_diversity == 0 or hp.routing_gradient,
         "interest_diversity needs routing_gradient: True (without it no gradient reaches the routing, "
         "and the penalty does not separate the interests)"),
        (hp.training_scores in ("label_aware", "merged"),
         f"training_scores must be label_aware or merged, got {hp.training_scores!r}"),
        (hp.training_scores == "label_aware" or hp.loss_type in ("CE", "SSM"),
         "training_scores: merged needs loss_type: CE or SSM"),
        (hp.interest_merge in ("max", "mixture"), f"interest_merge must be max or mixture, got {hp.interest_merge!r}"),
        (hp.interest_merge == "max" or hp.training_scores == "merged",
         "interest_merge: mixture needs training_scores: merged (the training logits are the merged scores)"),
        (hp.temperature > 0, f"temperature must be > 0, got {hp.temperature}"),
        (hp.loss_type in LOSS_TYPES, f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {hp.loss_type!r}"),
        (hp.loss_type != "SSM" or hp.num_negatives >= 1,
         f"num_negatives must be >= 1 with loss_type SSM, got {hp.num_negatives}"),
        (hp.softmax_dtype in SOFTMAX_DTYPE_CHOICES,
         f"softmax_dtype must be auto, float32 or bfloat16, got {hp.softmax_dtype!r}"),
        (hp.sampling_distribution in SAMPLING_DISTRIBUTIONS,
         f"sampling_distribution must be uniform or popularity, got {hp.sampling_distribution!r}"),
    )
    problems += [message for ok, message in checks if not ok]
    if problems:
        raise UserError("MIND config: " + "; ".join(problems))
    # resolved here, so a run's record (and --compare's protocol) names the dtype it used
    hp.softmax_dtype = resolve_softmax_dtype(hp.softmax_dtype, config["device"] if "device" in config else "cpu")
    return hp
