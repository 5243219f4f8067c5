"""RecBole's SASRec and GRU4Rec with MIND's `normalize_vectors` scoring, to see whether the gain
of `normalize_vectors` (2026-11-23) is MIND's or the cosine softmax's.

``SASRecCosine`` / ``GRU4RecCosine`` are RecBole's own models with one change: the sequence
vector and the item table are L2-normalised, so every score is a cosine, and the training CE
divides them by ``cosine_temperature`` (0.1, MIND's default ``temperature``). Everything else,
their config (RecBole's SASRec.yaml / GRU4Rec.yaml), dropout and CE over the whole table, is
theirs. A bench tool, not a model of the plugin: it logs like ``bench.mind_experiments``.

Usage (from the project root):
    python -m bench.cosine_baselines --log results/experiments/ml-100k.jsonl --tag sasrec_cosine \
        --model SASRec --dataset ml-100k epochs=20 learning_rate=0.001

A run still training when its figures are needed (SASRec on amazon-videogames: ~2.5 h) can be measured
where it stands: ``--test_checkpoint`` evaluates the best checkpoint it has saved so far on the
test set (and with each row's history removed), with the same key=value settings (refused if
they differ from the checkpoint's), and logs that as a record marked ``partial``:
    python -m bench.cosine_baselines --log ... --tag sasrec_cosine_partial --model SASRec \
        --dataset amazon-videogames --test_checkpoint /tmp/mind_experiments/<tag>/SASRecCosine-....pth \
        --epochs_done 14 data_path=../shared/data epochs=20 learning_rate=0.001
"""

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import recbole_mind  # noqa: F401  (its fixes of RecBole on this stack, before RecBole's models load)
from bench.mind_experiments import append_record, done_tags, parse_overrides, run_one
from bench.tool_errors import user_errors_exit_2
from recbole.model.sequential_recommender import GRU4Rec, SASRec


class CosineScores:
    """Mixin over a RecBole sequential model with ``forward(item_seq, item_seq_len)``, an
    ``item_embedding`` table and CE's ``loss_fct``."""

    def _cosine_setup(self, config):
        if self.loss_type != "CE":
            raise ValueError("the cosine baselines are for loss_type CE")
        self.cosine_temperature = float(config["cosine_temperature"] or 0.1)

    def _unit_sequence(self, interaction):
        return F.normalize(self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]), dim=-1)

    def _unit_items(self, items=None):
        table = self.item_embedding.weight if items is None else self.item_embedding(items)
        return F.normalize(table, dim=-1)

    def calculate_loss(self, interaction):
        logits = self._unit_sequence(interaction) @ self._unit_items().t() / self.cosine_temperature
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        return (self._unit_sequence(interaction) * self._unit_items(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction):
        return self._unit_sequence(interaction) @ self._unit_items().t()


class SASRecCosine(CosineScores, SASRec):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self._cosine_setup(config)


class GRU4RecCosine(CosineScores, GRU4Rec):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self._cosine_setup(config)


MODELS = {"SASRec": SASRecCosine, "GRU4Rec": GRU4RecCosine}


def recbole_properties(name):
    import recbole

    return str(Path(recbole.__file__).parent / "properties" / "model" / f"{name}.yaml")


def evaluate_checkpoint(args, overrides, path):
    """A record of ``path``, the best checkpoint a cosine baseline's run has saved so far (the
    run may still be training): its test metrics, also with each row's history removed."""
    from recbole.utils import get_trainer, init_seed

    from recbole_mind.checkpoint import check_matches, load_checkpoint
    from recbole_mind.config import build_config
    from recbole_mind.data import prepare_data
    from recbole_mind.errors import UserError
    from recbole_mind.train import history_excluded, resume_changes

    torch.set_num_threads(args.threads)
    model_class = MODELS[args.model]
    checkpoint = load_checkpoint(path)
    config = build_config(model_class, args.dataset, config_files=[recbole_properties(args.model)],
                          config_dict={"show_progress": False, **overrides})
    changed = resume_changes(checkpoint["config"], config)
    if changed:
        raise UserError(f"{path} was trained with other settings: "
                        + ", ".join(f"{k} {saved!r} (given: {now!r})" for k, (now, saved) in changed.items())
                        + "; give the run's own key=value settings")
    init_seed(config["seed"], config["reproducibility"])
    _, train_data, _, test_data = prepare_data(config)
    model = model_class(config, train_data._dataset)
    check_matches(checkpoint, path, config["model"], model.n_items)
    model.load_state_dict(checkpoint["state_dict"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    started = time.time()
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    eval_s = time.time() - started
    with history_excluded(model):
        masked = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    return {
        "tag": args.tag, "model": model_class.__name__, "dataset": args.dataset, "overrides": overrides,
        "resolved": None, "partial": f"best checkpoint so far of an unfinished run: {path}",
        "valid": {config["valid_metric"].lower(): float(checkpoint["best_valid_score"])},
        "test": {k: float(v) for k, v in test.items()},
        "test_history_excluded": {k: float(v) for k, v in masked.items()},
        "epochs_run": args.epochs_done, "best_epoch": checkpoint["epoch"] + 1,
        "train_s_per_epoch": None, "eval_s": round(eval_s, 3), "threads": args.threads,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


@user_errors_exit_2
def main():
    parser = argparse.ArgumentParser(prog="python -m bench.cosine_baselines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--test_checkpoint", metavar="PATH",
                        help="evaluate this best checkpoint of a run (maybe unfinished) instead of training")
    parser.add_argument("--epochs_done", type=int, default=None,
                        help="with --test_checkpoint: epochs the run had finished (from its log), for the record")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    if args.tag in done_tags(args.log):
        print(f"{args.tag}: already in {args.log}, skipped")
        return
    overrides = {"cosine_temperature": 0.1, **parse_overrides(args.overrides)}
    if args.test_checkpoint:
        return append_record(args.log, evaluate_checkpoint(args, overrides, args.test_checkpoint))
    append_record(args.log, run_one(args, overrides, model=MODELS[args.model],
                                    config_files=[recbole_properties(args.model)]))


if __name__ == "__main__":
    main()
