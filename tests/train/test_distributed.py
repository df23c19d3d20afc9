"""Training as separate processes: SIGKILL mid-run then resume, and 2-process DDP (gloo, CPU)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from qsft_robot.data.lerobot_writer import write_lerobot_v30
from qsft_robot.sim.collect import collect_episodes

pytestmark = pytest.mark.slow   # multi-process training (torchrun, accelerate launch) and SIGKILL

COMMON = ["--set", "algo.num_bins=16", "--set", "train.batch_size=8", "--set", "train.tensorboard=false",
          "--set", "train.warmup_steps=1", "--set", "train.keep_last=5"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "ds"
    write_lerobot_v30(collect_episodes("arm_reach", 6, "mixed", seed=0), root, fps=10)
    return root


def train_cmd(data, out, steps, *extra):
    return ["-m", "qsft_robot.cli", "--log-level", "WARNING", "train", "--data", str(data), "--out", str(out),
            "--set", f"train.steps={steps}", *COMMON, *extra]


def weights(run, step):
    d = run / "checkpoints" / f"step-{step:08d}"
    return {sub: load_file(str(next((d / sub).glob("*.safetensors")))) for sub in ("model", "behavior", "target")}


def assert_close(a, b, atol):
    for sub in a:
        assert a[sub].keys() == b[sub].keys()
        for k in a[sub]:
            assert torch.allclose(a[sub][k], b[sub][k], atol=atol), f"{sub}/{k}"


# Bit-reproducible CPU maths for the comparison at 1e-6: one thread, and MKL's conditional numerical
# reproducibility, without which sgemm's result may depend on buffer alignment and on how many threads
# MKL picks under load (a loaded CI machine once gave a 1e-6 difference in one weight matrix). Adam
# divides by sqrt(v), so such rounding in a near-zero gradient can grow past any fixed tolerance.
REPRODUCIBLE = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MKL_DYNAMIC="FALSE", MKL_CBWR="COMPATIBLE")


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, dataset):
    steps = 8
    every = ("--set", "train.save_every=2")
    full = subprocess.run([sys.executable, *train_cmd(dataset, tmp_path / "full", steps, *every)],
                          capture_output=True, text=True, timeout=600, env=REPRODUCIBLE)
    assert full.returncode == 0, full.stderr[-2000:]
    proc = subprocess.Popen([sys.executable, *train_cmd(dataset, tmp_path / "killed", steps,
                                                        "--set", "train.save_every=2")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=REPRODUCIBLE)
    first = tmp_path / "killed" / "checkpoints" / "step-00000002" / "trainer_state.pt"
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").glob("step-*"))
    assert done and done[-1] < f"step-{steps:08d}", done
    resumed = subprocess.run([sys.executable, *train_cmd(dataset, tmp_path / "killed", steps,
                                                         "--set", "train.save_every=2")],
                             capture_output=True, text=True, timeout=600, env=REPRODUCIBLE)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_close(weights(tmp_path / "full", steps), weights(tmp_path / "killed", steps), atol=1e-6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(data, out, steps, *extra, log_level="WARNING", launcher="torchrun"):
    """2 processes, started the way docs/training.md says: torchrun, or accelerate launch (--multi_gpu is
    accelerate's name for its torchrun path; it runs on CPU with gloo too)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = train_cmd(data, out, steps, *extra)
    cmd[cmd.index("--log-level") + 1] = log_level
    port = str(free_port())
    if launcher == "torchrun":
        head = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", port]
    else:
        head = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
                "--main_process_port", port]
    return subprocess.run([sys.executable, *head, *cmd], capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, dataset):
    """The reference: 3 steps in one process, global batch 8."""
    out = tmp_path_factory.mktemp("one") / "run"
    one = subprocess.run([sys.executable, *train_cmd(dataset, out, 3)], capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    return out


def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path, dataset, one_process):
    steps = 3
    two = torchrun(dataset, tmp_path / "two", steps, launcher="accelerate")
    assert two.returncode == 0, two.stderr[-3000:]
    state = torch.load(tmp_path / "two" / "checkpoints" / f"step-{steps:08d}" / "trainer_state.pt", weights_only=False)
    assert state["world_size"] == 2
    # 5e-5: gloo's all-reduce sums in another order and Adam turns near-zero gradients into ~lr-sized
    # steps; measured 8 of 4.8M weights above 1e-5 (max 1.6e-5). A missing or wrong gradient sync moves
    # most weights by ~lr = 3e-4.
    assert_close(weights(one_process, steps), weights(tmp_path / "two", steps), atol=5e-5)


def test_two_process_fsdp_equals_one_process_and_resumes_exactly(tmp_path, dataset, one_process):
    """FSDP2 (torch fully_shard over gloo): theta, pi_beta, theta_bar sharded; checkpoints are full HF
    folders gathered from the shards; the optimizer state round-trips through them."""
    steps, run = 3, tmp_path / "fsdp"
    every = ("--set", "train.save_every=1", "--set", "train.distributed=fsdp")
    p = torchrun(dataset, run, steps, *every, log_level="INFO")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "sharded over 2 processes" in p.stderr
    state = torch.load(run / "checkpoints" / f"step-{steps:08d}" / "trainer_state.pt", weights_only=False)
    assert state["world_size"] == 2 and state["distributed"] == "fsdp"
    full = weights(run, steps)
    # measured max 1.6e-5 (same reduction-order noise as DDP); an unsynchronised shard moves by ~lr
    assert_close(weights(one_process, steps), full, atol=5e-5)
    # resume from step 2 (its optimizer state gathered to one file, re-sharded on load): bit-exact
    import shutil
    shutil.rmtree(run / "checkpoints" / f"step-{steps:08d}")
    p = torchrun(dataset, run, steps, *every, log_level="INFO")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from" in p.stderr and "step-00000002" in p.stderr
    assert_close(full, weights(run, steps), atol=0.0)
    # a sharded run's checkpoint cannot be resumed unsharded by mistake: the error names the key
    p = subprocess.run([sys.executable, *train_cmd(dataset, run, steps + 1)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2 and "train.distributed" in p.stderr


def test_batch_must_divide_over_processes(tmp_path, dataset):
    p = subprocess.run([sys.executable, *train_cmd(dataset, tmp_path / "r", 1, "--set", "train.batch_size=7",
                                                   "--set", "train.grad_accum=2")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "train.grad_accum" in p.stderr
