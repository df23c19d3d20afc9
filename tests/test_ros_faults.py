"""The policy node when things go wrong, over real ROS 2 in separate processes (issue 18).

Inference slowness and failures are made deterministic with the fault-injection policies of
`qsft_robot.ros.fault_policies` (a color_seek that sleeps, or raises), loaded as plug-ins. Latency bars
are checked twice: from the node's own monotonic stamps (the issue's bar) and, with transport slack for
a loaded CI machine, from this process's publish/receive times.
"""
from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest
from test_ros_node import PKG, RED, Probe, next_domain, start, stop

rclpy = pytest.importorskip("rclpy", reason="install the 'ros' extra (ros-kilted-* wheels)")
from std_msgs.msg import Float64MultiArray  # noqa: E402

SLOW = "qsft_robot.ros.fault_policies:SlowPolicy"
FAILING = "qsft_robot.ros.fault_policies:FailingPolicy"
TRANSPORT_SLACK = 0.25  # DDS both ways + this process's scheduling on a loaded 2-core machine


@pytest.fixture
def domain():
    return next_domain()


@pytest.fixture
def probe(domain):
    p = Probe(domain)
    yield p
    p.close()


def node(domain, profile="base", **kw):
    params = {"policy": "color_seek", "instruction": "drive to the red cone", "control_hz": 5.0}
    params.update(kw)
    return start("policy_node", PKG / "config" / f"{profile}.yaml", domain=domain, **params)


def moving(m) -> bool:
    return abs(m.linear.x) > 1e-9 or abs(m.angular.z) > 1e-9


def test_watchdog_stops_while_inference_hangs_and_discards_the_late_result(domain, probe, report):
    """Five quick actions, then every inference takes 3 s: the camera stops while one is in flight."""
    proc = node(domain, policy=SLOW, policy_args=json.dumps({"delay": 3.0, "fast_calls": 5}), max_image_age=0.5)
    try:
        assert probe.wait_for("/qsft/status", timeout=30), "node did not come up"
        t_last = probe.stream(8.0, hz=10, rgb=RED,
                              until=lambda: probe.status().get("inference_busy") and probe.status()["actions"] >= 5)
        assert probe.status().get("inference_busy"), "the slow inference never started"
        time.sleep(4.0)  # the 3 s inference finishes meanwhile: its frame is stale, so it must be dropped
        cmds = probe.msgs["/qsft/preview"]
        moves = [t for t, m in cmds if moving(m)]
        assert moves, "the quick actions should have moved the robot"
        first_stop = next(t for t, m in cmds if t > moves[-1] and not moving(m))
        status = probe.status()
        report(f"slow inference (3 s): stop {1e3 * (first_stop - t_last):.0f} ms after the last frame was "
               f"published (test clock), watchdog stop {status['watchdog_stop']} (node clock), "
               f"discarded_stale={status['discarded_stale']}")
        assert status["watchdog_stop"]["frame_age_ms"] <= 500 + 100, status["watchdog_stop"]
        assert first_stop - t_last <= 0.5 + 0.1 + TRANSPORT_SLACK
        assert all(not moving(m) for t, m in cmds if t > first_stop), "a late result was published"
        assert status["discarded_stale"] >= 1 and status["state"] == "stale"
        assert proc.poll() is None
    finally:
        stop(proc)


def test_policy_exception_stops_reports_fault_and_exits_nonzero(domain, probe):
    proc = node(domain, policy=FAILING, policy_args=json.dumps({"fail_at": 4}), enable_actuation=True)
    try:
        assert probe.wait_for("/qsft/status", timeout=30)
        probe.stream(3.0, hz=10, rgb=RED, until=lambda: proc.poll() is not None)
        rc = proc.wait(timeout=10)
        out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            stop(proc)
    assert rc == 3, out[-2000:]
    faults = [s for _, s in probe.msgs["/qsft/status"] if s["state"] == "fault"]
    assert faults and "injected policy failure" in faults[-1]["fault"]
    cmds = probe.msgs["/cmd_vel"]
    assert any(moving(m) for _, m in cmds), "it moved before the fault"
    t_fault = next(t for t, s in probe.msgs["/qsft/status"] if s["state"] == "fault")
    assert not moving(cmds[-1][1]) and all(not moving(m) for t, m in cmds if t >= t_fault)
    assert "FAULT: policy raised RuntimeError" in out


def test_sigint_during_inference_exits_0_after_a_final_zero(domain, probe):
    proc = node(domain, policy=SLOW, policy_args=json.dumps({"delay": 3.0, "fast_calls": 3}), enable_actuation=True,
                max_image_age=5.0)
    try:
        assert probe.wait_for("/qsft/status", timeout=30)
        probe.stream(8.0, hz=10, rgb=RED, until=lambda: probe.status().get("inference_busy")
                     and probe.status()["actions"] >= 3)
        assert probe.status().get("inference_busy")
        assert moving(probe.msgs["/cmd_vel"][-1][1]), "should still be moving: max_image_age is 5 s"
        t_sig = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
        t_exit = time.monotonic()
    finally:
        if proc.poll() is None:
            stop(proc)
    time.sleep(0.3)
    assert proc.returncode == 0, out[-2000:]
    assert t_exit - t_sig < 2.0, "it waited for the 3 s inference"
    assert "terminate called" not in out
    last_t, last = probe.msgs["/cmd_vel"][-1]
    assert not moving(last) and last_t > t_sig


def test_first_command_from_rest_and_after_a_stop_is_slew_limited(domain, probe):
    # base profile: max_rate 2.0 m/s per s; at control_hz 5 one tick allows 0.4 m/s (color_seek asks 0.5)
    proc = node(domain, max_image_age=0.3)
    try:
        assert probe.wait_for("/qsft/status", timeout=30)
        probe.stream(1.5, hz=20, rgb=RED)
        time.sleep(1.0)  # camera silent: the watchdog stops the robot
        t_resume = time.monotonic()
        probe.stream(1.5, hz=20, rgb=RED)
    finally:
        stop(proc)
    cmds = probe.msgs["/qsft/preview"]
    moves = [(t, m) for t, m in cmds if moving(m)]
    assert moves and max(m.linear.x for _, m in moves) == pytest.approx(0.5), "it should reach full speed"
    first = moves[0][1]
    first_after_stop = next(m for t, m in moves if t > t_resume)
    assert 0 < first.linear.x <= 0.4 + 1e-9, first.linear.x
    assert 0 < first_after_stop.linear.x <= 0.4 + 1e-9, first_after_stop.linear.x
    stop_after_motion = [m for t, m in cmds if moves[0][0] < t < t_resume and not moving(m)]
    assert stop_after_motion, "the stale stop is a single immediate zero, not a ramp"


def test_stamps_size_cap_and_640x480_frames(domain, probe, report):
    """Age from header.stamp; oversized frames rejected with the reason; 640x480 rgb8 at 10 Hz arrives."""
    proc = node(domain, max_image_pixels=640 * 480, control_hz=5.0)
    try:
        assert probe.wait_for("/qsft/status", timeout=30)
        probe.publish_image(np.zeros((481, 640, 3), np.uint8))
        probe.stream(1.5, hz=10, rgb=RED, stamp_offset=-5.0)  # taken 5 s ago, arriving now
        time.sleep(0.5)
        s = probe.status()
        assert s["frames"] >= 13, s
        assert s["actions"] == 0 and s["state"] == "stale" and s["malformed"] == 1, s
        assert not any(moving(m) for _, m in probe.msgs["/qsft/preview"])
        probe.stream(1.0, hz=10, rgb=RED, stamp_offset=0.0)
        assert probe.wait_for("/qsft/status", lambda s: s["actions"] > 0, timeout=5)
        time.sleep(0.5)  # frames still in flight are counted before the 640x480 ones
        before = probe.status()["frames"]
        big = np.zeros((480, 640, 3), np.uint8)
        big[160:320, 280:360] = (230, 25, 25)
        for _ in range(30):  # 640x480 rgb8 at 10 Hz, the default (reliable) QoS on both sides
            probe.publish_image(big)
            time.sleep(0.1)
        time.sleep(1.0)
        got = probe.status()["frames"] - before
        t0 = time.monotonic()
        for i in range(60):  # and at 30 Hz, as camera drivers publish
            probe.publish_image(big)
            time.sleep(max(0.0, t0 + (i + 1) / 30 - time.monotonic()))
        time.sleep(1.0)
        got30 = probe.status()["frames"] - before - got
    finally:
        out = stop(proc)
    report(f"640x480 rgb8: {got}/30 frames at 10 Hz, {got30}/60 at 30 Hz reached the node")
    assert got >= 27, f"only {got}/30 frames of 640x480 at 10 Hz reached the node"
    assert got30 >= 54, f"only {got30}/60 frames of 640x480 at 30 Hz reached the node"
    assert "exceeds max_image_pixels=307200" in out


def test_instruction_parameter_at_run_time_and_unsafe_changes_refused(domain, probe):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    proc = node(domain, control_hz=10.0)
    try:
        assert probe.wait_for("/qsft/status", timeout=30)
        client = probe.node.create_client(SetParameters, "/qsft_policy/set_parameters")
        assert client.wait_for_service(timeout_sec=10)

        def set_param(name, value):
            if isinstance(value, str):
                v = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
            else:
                v = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
            fut = client.call_async(SetParameters.Request(parameters=[Parameter(name=name, value=v)]))
            end = time.monotonic() + 10
            while not fut.done() and time.monotonic() < end:
                time.sleep(0.05)
            return fut.result().results[0]

        probe.stream(1.5, hz=20, rgb=RED)
        assert any(m.linear.x > 0.1 for _, m in probe.msgs["/qsft/preview"])
        r = set_param("instruction", "drive to the blue cone")
        assert r.successful, r.reason
        t_set = time.monotonic()
        probe.stream(1.5, hz=20, rgb=RED)  # no blue in view: color_seek turns in place to search
        late = [m for t, m in probe.msgs["/qsft/preview"] if t > t_set + 0.8]
        assert late and all(abs(m.linear.x) < 1e-9 and m.angular.z > 0.1 for m in late)
        assert probe.status()["instruction"] == "drive to the blue cone"
        r = set_param("control_hz", 50.0)
        assert not r.successful and "start-up only" in r.reason
        r = set_param("instruction", "x" * 1000)
        assert not r.successful and "max_instruction_chars" in r.reason
    finally:
        stop(proc)


def test_arm_profile_with_color_seek_acts_and_reports(domain):
    probe = Probe(domain, preview_type=Float64MultiArray)
    proc = node(domain, profile="arm", instruction="reach the red block")
    try:
        assert probe.wait_for("/qsft/status", timeout=30)
        probe.stream(2.0, hz=10, rgb=RED)
        assert probe.wait_for("/qsft/status", lambda s: s["actions"] > 0, timeout=5)
        cmds = [m.data for _, m in probe.msgs["/qsft/preview"]]
        assert cmds and all(len(c) == 4 for c in cmds)
        assert any(c[0] > 0 for c in cmds) and all(abs(c[0]) <= 0.03 + 1e-9 for c in cmds)
        assert proc.poll() is None
    finally:
        stop(proc)
        probe.close()
