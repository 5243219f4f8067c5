"""Several processes on the CPU (gloo): RecBole's DDP path made device-aware and exact."""

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import write_tiny_dataset
from recbole_mind import checkpoint, cli, distributed, tune
from recbole_mind.errors import UserError
from recbole_mind.train import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def odd_root(tmp_path_factory):
    # 61 users: two ranks get 31 and 30 evaluation rows, where RecBole's sampler repeats one
    return write_tiny_dataset(str(tmp_path_factory.mktemp("odd")), name="odd", n_users=61)


def settings(tiny_config, odd_root, **overrides):
    return tiny_config | {"data_path": odd_root, "eval_batch_size": 16} | overrides


def test_two_processes_evaluate_exactly_as_one(tiny_config, odd_root):
    one = run("MIND", "odd", config_dict=settings(tiny_config, odd_root, epochs=0), saved=False)
    two = run("MIND", "odd", config_dict=settings(tiny_config, odd_root, epochs=0, nproc=2), saved=False)
    assert two["test_result"] == one["test_result"]
    assert two["best_valid_result"] == one["best_valid_result"]
    assert two["interest_health"] == one["interest_health"]  # figures outside the Trainer see every row
    assert two["distributed"]["world_size"] == 2 and two["distributed"]["backend"] == "gloo"
    assert len(two["distributed"]["rank_peak_rss_mb"]) == 2
    assert "distributed" not in one


def test_two_processes_train_and_write_one_checkpoint(tiny_config, odd_root, tmp_path):
    folder = tmp_path / "saved"
    result = run("GRU4Rec", "odd", config_dict=settings(tiny_config, odd_root, epochs=2, nproc=2,
                                                          checkpoint_dir=str(folder)))
    assert result["epochs_run"] == 2 and result["best_epoch"] in (1, 2)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
    assert glob.glob(str(folder / "*")) == [result["saved_model_file"]]  # one file, no partial left
    restored = checkpoint.restore(result["saved_model_file"], "GRU4Rec")  # back on one process
    assert restored.config["single_spec"] and not distributed.is_distributed()


def fail_on_rank_one(how):
    def hook(trainer, train_data):
        if distributed.global_rank() == 1:
            # when it failed, beside the checkpoint folder: the run must end well within the
            # collectives' timeout after this, however long the ranks took to start
            (Path(trainer.config["checkpoint_dir"]).parent / "failed_at").write_text(str(time.time()))
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise ValueError("planted failure")
    return hook


def kill_rank_one(trainer, train_data):
    return fail_on_rank_one("kill")(trainer, train_data)


def raise_on_rank_one(trainer, train_data):
    return fail_on_rank_one("raise")(trainer, train_data)


@pytest.mark.parametrize("hook, cause", [(kill_rank_one, "killed (SIGKILL)"),
                                         (raise_on_rank_one, "ValueError: planted failure (at test_distributed.py:")])
def test_a_failing_rank_ends_the_run_with_one_message(tiny_config, odd_root, tmp_path, hook, cause):
    folder = tmp_path / "saved"
    with pytest.raises(UserError) as error:
        run("MIND", "odd", config_dict=settings(tiny_config, odd_root, nproc=2, ddp_timeout=30,
                                                checkpoint_dir=str(folder)), trainer_hook=hook)
    assert time.time() - float((tmp_path / "failed_at").read_text()) < 20  # not the 30 s timeout
    message = str(error.value)
    assert message.startswith("rank 1 of 2 failed: ") and cause in message and "\n" not in message
    assert not glob.glob(str(folder / "*"))


def test_torchrun_environment_maps_to_recbole_keys():
    environ = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    assert distributed.torchrun_settings(environ) == {"local_rank": 1, "offset": 2, "world_size": 4, "nproc": 2,
                                                      "ip": "10.0.0.1", "port": 29500}
    assert distributed.torchrun_settings({}) is None
    flags = SimpleNamespace(nproc=2, world_size=None, ip=None, port=None, group_offset=None)
    assert cli.distributed_overrides(flags, {}) == {"nproc": 2}
    with pytest.raises(UserError, match="under torchrun"):
        cli.distributed_overrides(flags, environ)


def test_launch_settings_complete_and_check_the_flags():
    completed = distributed.launch_settings({"nproc": 2})
    assert completed["world_size"] == 2 and completed["offset"] == 0 and completed["ip"] == "127.0.0.1"
    assert completed["port"] > 0
    with pytest.raises(UserError, match="--port is needed"):
        distributed.launch_settings({"nproc": 2, "world_size": 4, "offset": 2})
    with pytest.raises(UserError, match="exceeds --world_size"):
        distributed.launch_settings({"nproc": 2, "world_size": 3, "offset": 2, "port": 29500})


def test_torchrun_runs_the_command_line(odd_root, tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    rank_logs = tmp_path / "ranks"  # each rank's own output, kept for the failure message
    command = [torchrun, "--nproc_per_node", "2", "--master_port", str(distributed.free_port()),
               "--log_dir", str(rank_logs), "--redirects", "3", "--tee", "3",
               os.path.join(ROOT, "run_recbole_mind.py"), "--dataset", "odd", f"--data_path={odd_root}",
               "--epochs=0", "--MAX_ITEM_LIST_LENGTH=10", "--embedding_size=16", "--eval_batch_size=16",
               "--topk=[5,10]", "--seed=7", "--torch_threads", "1", f"--checkpoint_dir={tmp_path / 'saved'}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:] + "".join(
        f"\n--- {log.relative_to(rank_logs)}\n{log.read_text()[-1500:]}" for log in sorted(rank_logs.rglob("*.log")))
    assert done.stdout.count("MIND on odd: 0 epochs") == 1  # global rank 0 reports, once


def test_compare_pauses_and_resumes_on_two_processes(odd_root, tmp_path, capsys):
    def argv(*extra):
        return ["--compare", "GRU4Rec", "--dataset", "odd", "--lr_grid", "0.01", "--no_report", "--nproc", "2",
                "--results_dir", str(tmp_path), "--torch_threads", "1", f"--data_path={odd_root}",
                "--epochs=2", "--topk=[5,10]", "--state=ERROR", "--train_batch_size=64",
                "--MAX_ITEM_LIST_LENGTH=10", *extra]

    # a budget already spent: global rank 0 decides, every rank stops after epoch 1
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv("--time_budget", "1e-9"))
    assert stopped.value.code == 75
    runs = tmp_path / "leave_one_out" / "runs" / "odd"
    assert (runs / "GRU4Rec_lr0.01.state.json").is_file() and not (runs / "GRU4Rec_lr0.01.json").exists()
    assert cli.main(argv("--time_budget", "1e-9")) == 0  # epoch 2 is the last: no pause
    record = json.loads((runs / "GRU4Rec_lr0.01.json").read_text())
    assert record["protocol"]["nproc"] == 2 and record["pieces"] == 2
    assert record["result"]["epochs_run"] == 2 and record["result"]["distributed"]["world_size"] == 2
    assert record["peak_rss_mb"] >= max(record["result"]["distributed"]["rank_peak_rss_mb"])


def test_tuning_trials_run_on_two_processes(tiny_config, odd_root, tmp_path):
    space = tmp_path / "space.hyper"
    space.write_text("interest_num choice [1,2]\n")
    summary = tune.tune("MIND", "odd", str(space), config_dict=settings(tiny_config, odd_root, nproc=2),
                        algo="exhaustive", max_evals=2, output_file=str(tmp_path / "out.result"), display=False)
    assert sorted(t["params"]["interest_num"] for t in summary["trials"]) == [1, 2]
    assert all(t["epochs_run"] == 1 for t in summary["trials"])
