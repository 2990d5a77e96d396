"""Jobs of several ranks on CPU through the launchers: two "machines" on 127.0.0.1, validation on every
rank against one process's eval.py, sharded evaluation, and a failing rank that stops every launcher."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from src.evaluation import DIAGNOSTICS
from tests.commands.test_train import DETERMINISTIC_FLAGS, ENV, make_referring_set, read_params, run
from tests.conftest import ROOT, TINY_CONFIG

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

BIN_DIR = os.path.dirname(sys.executable)
REMOTE_NODE_MSRUN = os.path.join(ROOT, "tests", "commands", "remote_node_msrun.py")
# A failed rank ends the job within MS_NODE_TIMEOUT (MindSpore's default, 30 s) plus a few seconds; a hung
# job would run until this limit.
HANG_LIMIT = 240


@pytest.fixture(scope="module")
def cluster_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    _, flags = make_referring_set(root, images=40, seed=1)
    return root, flags + DETERMINISTIC_FLAGS + ["--eval_batch_size", "4"]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher_env(log_dir, port, node_num=1, node_rank=0, remote=False):
    """Environment of one machine's launcher; `remote`: msrun as on a machine other than the master's."""
    # msrun starts each worker with the `python` found on PATH: make it this interpreter.
    env = dict(ENV, LOG_DIR=str(log_dir), MASTER_PORT=str(port), MASTER_ADDR="127.0.0.1", NODE_NUM=str(node_num),
               NODE_RANK=str(node_rank), PATH=BIN_DIR + os.pathsep + os.environ.get("PATH", ""),
               MSRUN=REMOTE_NODE_MSRUN if remote else os.path.join(BIN_DIR, "msrun"))
    return env


def start_launcher(script, device_num, args, env):
    return subprocess.Popen(["bash", f"scripts/{script}", "CPU", str(device_num), TINY_CONFIG, *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_two_machines(script, args, root, name):
    """The same launcher command on two "machines" (one worker each) -> their Popen objects and log dirs."""
    port = free_port()
    logs = [root / f"{name}_logs_machine{rank}" for rank in range(2)]
    launchers = [start_launcher(script, 1, args, launcher_env(logs[rank], port, 2, rank, remote=rank > 0))
                 for rank in range(2)]
    return launchers, logs


def finish(launcher):
    """Waits for a launcher -> (exit code, stdout + stderr, seconds waited)."""
    start = time.time()
    stdout, stderr = launcher.communicate(timeout=HANG_LIMIT)
    return launcher.returncode, stdout[-4000:] + stderr[-4000:], time.time() - start


@pytest.fixture(scope="module")
def two_machine_run(cluster_set):
    root, flags = cluster_set
    output = root / "two_machines"
    launchers, logs = start_two_machines("run_distribute_train.sh", [
        # A small learning rate: the weights change (so identical ranks mean the all-reduce worked) while the
        # predictions stay those of a random network, neither empty nor perfect (so equal metrics mean something).
        *flags[2:], "--epochs", "1", "--lr", "2e-5", "--eval_interval", "1", "--save_all_ranks", "true",
        "--output_dir", str(output)],
        root, "train")
    results = [finish(launcher) for launcher in launchers]
    for code, text, _ in results:
        assert code == 0, text
    return output, logs


def test_two_machines_train_to_identical_weights(two_machine_run):
    output, logs = two_machine_run
    assert [path.name for path in logs[0].glob("worker_*.log")] == ["worker_0.log"]
    assert [path.name for path in logs[1].glob("worker_*.log")] == ["worker_1.log"]
    assert "weights identical on all 2 ranks" in (logs[0] / "worker_0.log").read_text()
    rank0, rank1 = read_params(output / "last.ckpt"), read_params(output / "rank_1" / "last.ckpt")
    weights = [name for name in rank0 if not name.startswith(("adam_", "global_step", "epoch", "step"))]
    assert len(weights) > 300
    for name in weights:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)


def test_validation_on_every_rank_equals_one_process_eval(two_machine_run, cluster_set):
    """The all-gathered validation metrics of training are those of eval.py, to the last digit; the proposal
    diagnostics it logs agree to 1e-6 (they are means of float32 network outputs, such as the SMA weights, which
    the CPU kernels compute to the last bit only for the same batch: a rank's batches hold other samples)."""
    output, _ = two_machine_run
    _, flags = cluster_set
    records = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    validated = [record["val"] for record in records if "val" in record]
    assert len(validated) == 1
    result_json = output / "eval_one_process.json"
    run([sys.executable, "eval.py", *flags, "--ckpt_path", str(output / "best.ckpt"), "--eval_splits", "val",
         "--result_json", str(result_json), "--eval_diagnostics", "true"])
    one_process = json.loads(result_json.read_text())["val"]
    print(f"\nvalidation in the two-machine run: {validated[0]}\neval.py, one process:             {one_process}")
    diagnostics = [name for name in one_process if name in DIAGNOSTICS]
    assert len(diagnostics) == len(DIAGNOSTICS)
    assert {name: value for name, value in one_process.items() if name not in diagnostics} == {
        name: value for name, value in validated[0].items() if name not in diagnostics}
    assert {name: one_process[name] for name in diagnostics} == pytest.approx(
        {name: validated[0][name] for name in diagnostics}, abs=1e-6)
    assert 0 < one_process["oIoU"] < 1 and one_process["num_samples"] > 0


def test_distributed_eval_writes_what_one_process_writes(two_machine_run, cluster_set, tmp_path):
    output, _ = two_machine_run
    root, flags = cluster_set
    common = [*flags[2:], "--ckpt_path", str(output / "best.ckpt"), "--eval_splits", "val,testA,testB"]
    run([sys.executable, "eval.py", *flags[:2], *common, "--result_json", str(tmp_path / "one.json"),
         "--per_sample_json", str(tmp_path / "one.jsonl")])
    launcher = start_launcher("run_distribute_eval.sh", 2, [*common, "--result_json", str(tmp_path / "two.json"),
                                                          "--per_sample_json", str(tmp_path / "two.jsonl")],
                              launcher_env(tmp_path / "logs", free_port()))
    code, text, _ = finish(launcher)
    assert code == 0, text
    assert (tmp_path / "two.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert len((tmp_path / "one.jsonl").read_text().splitlines()) == sum(
        split["num_samples"] for split in json.loads((tmp_path / "one.json").read_text()).values())


def worker_pid(rank, marker):
    """pid of the worker process of `rank` whose command line holds `marker`, or None."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().decode(errors="replace")
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
        except OSError:
            continue
        if "train.py" in cmdline and marker in cmdline and f"RANK_ID={rank}".encode() in environ:
            return int(entry)
    return None


def wait_for(predicate, limit, what):
    deadline = time.time() + limit
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_worker_ends_every_machines_launcher(cluster_set):
    root, flags = cluster_set
    output = root / "killed"
    launchers, logs = start_two_machines("run_distribute_train.sh", [
        *flags[2:], "--epochs", "3", "--eval_interval", "0", "--log_interval", "1", "--output_dir", str(output)],
        root, "killed")
    try:
        rank1_log = logs[1] / "worker_1.log"
        wait_for(lambda: rank1_log.is_file() and "step 1/" in rank1_log.read_text(), HANG_LIMIT, "rank 1's first step")
        pid = wait_for(lambda: worker_pid(1, str(output)), 30, "rank 1's pid")
        os.kill(pid, signal.SIGKILL)
        results = [finish(launcher) for launcher in launchers]
    finally:
        for launcher in launchers:
            launcher.kill()
    for code, text, seconds in results:
        print(f"\nlauncher exit {code} {seconds:.0f} s after the kill")
        assert code != 0, text
    assert "scheduler: rank(s) 1 stopped responding" in results[0][1], results[0][1]
    assert f"rank 1 (pid {pid}) exited with code -9" in results[1][1], results[1][1]


def test_raising_rank_ends_the_job_and_is_named(cluster_set):
    """Rank 1 cannot write its checkpoint (its folder is a file): it fails, and rank 0 must not hang."""
    root, flags = cluster_set
    output = root / "raising"
    output.mkdir()
    (output / "rank_1").write_text("a file where rank 1's checkpoint folder should be")
    launcher = start_launcher("run_distribute_train.sh", 2, [
        *flags[2:], "--epochs", "3", "--eval_interval", "0", "--save_all_ranks", "true", "--output_dir", str(output)],
        launcher_env(root / "raising_logs", free_port()))
    code, text, seconds = finish(launcher)
    print(f"\nlauncher exit {code} after {seconds:.0f} s")
    assert code != 0
    assert "rank 1 failed" in text and "error: rank 1: " in text, text
