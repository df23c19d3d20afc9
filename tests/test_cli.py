"""The `qsft-robot` command as a user runs it: subprocesses, real files."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "qsft_robot.cli", "--log-level", "WARNING", *args],
                       capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout}\n{p.stderr[-3000:]}")
    return p


@pytest.mark.parametrize("sub", [[], ["collect"], ["train"], ["eval"], ["demo"], ["data", "inspect"]])
def test_help_everywhere(sub):
    assert "usage" in run(*sub, "--help").stdout


@pytest.mark.slow
def test_collect_train_eval_inspect(tmp_path):
    ds = tmp_path / "ds"
    out = run("collect", "--task", "arm_reach", "--episodes", "6", "--out", str(ds), "--hdf5", str(tmp_path / "d.hdf5"))
    assert "wrote 6 episodes" in out.stdout
    insp = json.loads(run("data", "inspect", str(ds), "--json").stdout)
    assert insp["episodes"] == 6 and insp["action_dims"] == 4 and insp["cameras"]["wrist"] == [64, 64, 3]
    assert json.loads(run("data", "inspect", str(tmp_path / "d.hdf5"), "--json").stdout)["episodes"] == 6
    run("train", "--data", str(ds), "--out", str(tmp_path / "run"), "--set", "train.steps=2",
        "--set", "train.batch_size=4", "--set", "algo.num_bins=16")
    ev = run("eval", str(tmp_path / "run"), "--episodes", "2", "--num-envs", "2", "--videos", "1",
             "--support-eps", "0", "--out", str(tmp_path / "ev"))
    res = json.loads((tmp_path / "ev" / "eval_policy_arm_reach.json").read_text())
    successes = [e["success"] for e in res["per_episode"]]
    assert res["episodes"] == len(successes) == 2 and res["success_rate"] == sum(successes) / 2
    assert f"policy: success {res['success_rate']:.2f} [" in ev.stdout   # what was printed is what was saved
    mp4 = list((tmp_path / "ev" / "videos").glob("*.mp4"))
    assert len(mp4) == 1 and mp4[0].stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "{tmp}/nope", "--out", "{tmp}/r"], "dataset not found"),
    (["train", "--data", "{tmp}", "--set", "algo.bogus=1"], "`bogus` are not valid for AlgoConfig"),
    (["eval", "{tmp}/missing_ckpt"], "no usable checkpoint")])
def test_clear_errors(tmp_path, capsys, args, message):
    """A user's mistake is exit status 2 and one line on stderr that names it (in process: `main` is what
    the installed command calls)."""
    from qsft_robot.cli import main

    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    error = capsys.readouterr().err.split("qsft-robot: error: ")
    assert len(error) == 2 and message in error[1]


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, report):
    out = run("demo", "--quick", "--out", str(tmp_path / "demo"), "--set", "algo.num_bins=32").stdout
    assert "| sft |" in out and "| qsft |" in out
    res = json.loads((tmp_path / "demo" / "demo_results.json").read_text())
    assert (tmp_path / "demo" / "success.png").stat().st_size > 5000
    assert len(res["videos"]) == 4
    report(f"demo --quick wall time {res['wall_s']:.0f}s: " +
           ", ".join(f"{r['method']} {r['success']:.2f}" for r in res["rows"]))
