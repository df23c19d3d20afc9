"""The real `ros2 launch qsft_robot policy.launch.py` from a colcon-built workspace.

Skipped, with the reason, only where `ros2 launch` or colcon is absent: the launch system is not on
PyPI; `.ci/run` installs it from ../shared/wheels/ros2-launch/. Each launch gets its own process group
(SIGINT is delivered the way Ctrl-C delivers it) and its own ROS_DOMAIN_ID.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from test_node import LEFT, RED, ROOT, Probe, next_domain, output, popen_logged

rclpy = pytest.importorskip("rclpy", reason="install the 'ros' extra (ros-kilted-* wheels)")
pytest.importorskip("ros2launch", reason="ros2 launch is not installed: pip install --no-deps "
                                         "the ROS 2 launch wheels (docs/ros.md)")
import numpy as np  # noqa: E402
from geometry_msgs.msg import Twist, TwistStamped  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from qsft_robot.ros.params import PARAM_SPECS, PROFILES  # noqa: E402
from qsft_robot.ros.profiles import RobotProfile  # noqa: E402

pytestmark = pytest.mark.slow   # colcon builds and `ros2 launch` processes

FAILING = "qsft_robot.ros.fault_policies:FailingPolicy"


@pytest.fixture(scope="module")
def ws_env(tmp_path_factory):
    """colcon build of the package (as docs/ros.md says), and the environment its setup.bash gives."""
    colcon, ros2 = shutil.which("colcon"), shutil.which("ros2")
    if colcon is None or ros2 is None:
        pytest.skip("colcon or the ros2 command is not on PATH (dev extra; ros2-launch wheels)")
    ws = tmp_path_factory.mktemp("launch_ws")
    shutil.copytree(ROOT / "ros2_ws", ws / "ros2_ws", ignore=shutil.ignore_patterns("build", "install", "log"))
    shutil.copytree(ROOT / "configs", ws / "configs")
    p = subprocess.run([colcon, "build"], cwd=ws / "ros2_ws", capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    dump = subprocess.run(["bash", "-c", "source install/setup.bash && env -0"], cwd=ws / "ros2_ws",
                          capture_output=True, text=True, check=True).stdout
    env = dict(kv.split("=", 1) for kv in dump.split("\0") if "=" in kv)
    env.update(PYTHONUNBUFFERED="1", ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", OMP_NUM_THREADS="1")
    return env


def launch(env, domain, *args, file="policy.launch.py"):
    """`ros2 launch` in its own session (process group), output to a file (see popen_logged)."""
    return popen_logged(["ros2", "launch", "qsft_robot", file, *args], env={**env, "ROS_DOMAIN_ID": str(domain)},
                        start_new_session=True)


def finish(proc, sig=signal.SIGINT, timeout=20):
    """Signal the whole process group, as Ctrl-C in a terminal does (launch and its nodes all get it)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return output(proc)


def test_show_args_describes_every_argument(ws_env):
    out = subprocess.run(["ros2", "launch", "qsft_robot", "policy.launch.py", "--show-args"], env=ws_env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    blocks = [b.strip().splitlines() for b in out.split("\n\n") if b.strip().startswith("'")]
    names = {b[0].strip("': ") for b in blocks}
    # every node parameter is a launch argument (generated from the node's own table), plus the profile
    assert names == set(PARAM_SPECS) | {"profile"}, (set(PARAM_SPECS) ^ names, out)
    assert "(default: '')" in out and "may be changed at run time" in out
    assert all(len(b) >= 3 and b[1].strip() and not b[1].strip().startswith("(default") for b in blocks), out


# each shipped profile: its command message, the instruction of its config/<profile>.yaml, and a camera image
# color_seek acts on (the joint-position arm pans toward a blob off the image centre)
LAUNCHED = {"base": (Twist, "drive to the red cone", RED), "arm": (Float64MultiArray, "reach the red block", RED),
            "servo_arm": (TwistStamped, "reach the red block", RED),
            "so100": (JointTrajectory, "turn toward the red block", LEFT)}
POSE = [0.2, -0.4, 0.6, -0.8, 1.0, 0.4]  # the so100 arm's measured pose, published on /joint_states


def command_values(m) -> list[float]:
    if isinstance(m, Twist):
        return [m.linear.x, m.angular.z]
    if isinstance(m, TwistStamped):
        return [m.twist.linear.x, m.twist.linear.y, m.twist.linear.z]
    if isinstance(m, JointTrajectory):
        return list(m.points[0].positions)
    return list(m.data)


@pytest.mark.parametrize("profile", PROFILES)
def test_launch_color_seek_acts_and_stops_on_sigint(ws_env, report, profile):
    """Every shipped profile starts under `ros2 launch ... profile:=<it> policy:=color_seek`, acts, and ends on
    SIGINT with its stop: zero for velocities and deltas, the measured pose for joint positions."""
    msg_type, instruction, image = LAUNCHED[profile]
    holds = RobotProfile.load(ROOT / "configs" / "robots" / f"{profile}.yaml").holds_position
    joints = (RobotProfile.load(ROOT / "configs" / "robots" / "so100.yaml").joint_names, POSE) if holds else None
    domain = next_domain()
    probe = Probe(domain, preview_type=msg_type)
    t0 = time.monotonic()
    # max_image_age 5: the watchdog cannot stop the robot before SIGINT, so the final zero comes from shutdown
    proc = launch(ws_env, domain, f"profile:={profile}", "policy:=color_seek", "max_image_age:=5")
    try:
        assert probe.wait_for("/qsft/status", timeout=40), "no status from the launched node"
        t_up = time.monotonic()
        assert probe.status()["instruction"] == instruction, "the launch must keep the profile YAML's instruction"
        probe.stream(5.0, hz=10, rgb=image, joints=joints, until=lambda: probe.status().get("actions", 0) >= 3)
        assert probe.wait_for("/qsft/status", lambda s: s["actions"] > 0, timeout=5)
        values = [command_values(m) for _, m in probe.msgs["/qsft/preview"]]
        rest = POSE if holds else [0.0] * len(values[-1])
        assert any(not np.allclose(v, rest) for v in values), "commands for frames"
        assert not np.allclose(values[-1], rest), "still moving before SIGINT (max_image_age:=5)"
        assert probe.status()["state"] == "running", probe.status()
        t_sig = time.monotonic()
        out = finish(proc)
        t_end = time.monotonic()
        time.sleep(0.3)
        assert proc.returncode == 0, out[-3000:]
        assert "process has finished cleanly" in out
        last_t, last = probe.msgs["/qsft/preview"][-1]
        assert last_t > t_sig, "SIGINT must end with a stop"
        np.testing.assert_allclose(command_values(last), rest, rtol=0, atol=1e-9)  # zero, or the measured pose
        report(f"ros2 launch profile:={profile} policy:=color_seek: status after {t_up - t0:.1f}s, "
               f"SIGINT -> exit 0 in {t_end - t_sig:.2f}s")
    finally:
        finish(proc)
        probe.close()


def test_launch_fails_nonzero_when_the_checkpoint_is_missing(ws_env):
    proc = launch(ws_env, next_domain(), "profile:=base")
    try:
        proc.wait(timeout=60)
    finally:
        out = finish(proc)
    assert proc.returncode != 0, out[-3000:]
    assert "needs checkpoint" in out and "exited with status 2" in out


def test_launch_with_a_failing_policy_reports_fault_and_stops(ws_env):
    domain = next_domain()
    probe = Probe(domain)
    proc = launch(ws_env, domain, "profile:=base", f"policy:={FAILING}", "policy_args:=" + json.dumps({"fail_at": 3}),
                  "enable_actuation:=true", "control_hz:=10.0", "fault_linger_s:=0.5")
    try:
        assert probe.wait_for("/qsft/status", timeout=40)
        probe.stream(4.0, hz=10, rgb=RED, until=lambda: proc.poll() is not None)
        proc.wait(timeout=20)
    finally:
        out = finish(proc)
        probe.close()
    assert proc.returncode != 0 and "exited with status 3" in out, out[-3000:]
    faults = [s for _, s in probe.msgs["/qsft/status"] if s["state"] == "fault"]
    assert faults and "injected policy failure" in faults[-1]["fault"]
    cmds = probe.msgs["/cmd_vel"]
    assert any(m.linear.x > 0 for _, m in cmds) and cmds[-1][1].linear.x == 0.0 and cmds[-1][1].angular.z == 0.0


def sim_launch_against_eval(ws_env, report, task: str, dims: int, episodes: int, *args: str) -> tuple[str, int]:
    """`ros2 launch qsft_robot sim.launch.py task:=TASK ARGS` until it ends by itself (exit 0 asserted),
    with the in-process success of the same scripted policy on the same seeds: (its output, successes)."""
    from qsft_robot.ros.scripted_policy import ColorSeekPolicy
    from qsft_robot.sim.evaluate import evaluate

    max_steps = next((int(a.split(":=")[1]) for a in args if a.startswith("max_steps:=")), 0)
    ref = evaluate(ColorSeekPolicy(dims), task, episodes, 1000, num_envs=episodes, videos=0, max_steps=max_steps)
    t0 = time.monotonic()
    proc = launch(ws_env, next_domain(), f"task:={task}", f"episodes:={episodes}", "seed:=1000", *args,
                  file="sim.launch.py")
    try:
        proc.wait(timeout=120)
    finally:
        out = finish(proc)
    report(f"ros2 launch qsft_robot sim.launch.py task:={task} episodes:={episodes} {' '.join(args)}: "
           f"{time.monotonic() - t0:.1f}s")
    assert proc.returncode == 0, out[-3000:]
    assert "terminate called" not in out
    return out, sum(r["success"] for r in ref["per_episode"])


def test_sim_launch_runs_the_closed_loop_in_one_command(ws_env, report):
    """sim.launch.py: bridge + node, lockstep, ends by itself with the in-process success on the same seeds."""
    out, ref_succ = sim_launch_against_eval(ws_env, report, "base_goto", 2, 3)
    assert f"base_goto: success {ref_succ}/3 (lockstep" in out, out[-3000:]
    # the launch wires /sim/joint_states on both sides: the bridge applies a command only when the node
    # reports it was computed with this frame's state (it sends both again otherwise, and gives up after
    # max_resends in a row: without the node's side of the wiring the launch fails)
    assert "proprio state on /sim/joint_states" in out and "lockstep aborted" not in out, out[-3000:]


def test_sim_launch_drives_a_metaworld_task(ws_env, report):
    """The Meta-World launch line of docs/tasks.md: a Gymnasium task behind the same bridge, arm profile."""
    pytest.importorskip("metaworld", reason="install the 'metaworld' extra (docs/tasks.md)")
    out, ref_succ = sim_launch_against_eval(ws_env, report, "metaworld/reach-v3", 4, 1, "profile:=arm",
                                            "policy:=color_seek", "max_steps:=20")
    assert f"metaworld/reach-v3: success {ref_succ}/1 (lockstep" in out, out[-3000:]
    assert "success=False in 20 steps" in out or ref_succ == 1, out[-3000:]
