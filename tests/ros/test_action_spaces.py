"""Each action space on the real node, over real ROS 2 in separate processes: the arm gets commands with the
meaning its controller reads, and every stop (stale camera, e-stop, SIGINT) is a zero twist for end-effector
velocities or holds the measured joints for absolute joint targets, never 'go to zero'.

The base's stops are checked in test_node.py / test_faults.py; here: MoveIt Servo (servo_arm,
TwistStamped + gripper) and the SO-100-style joint-position arm (so100, JointTrajectory + JointState).
"""
from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest
from test_node import LEFT, PKG, RED, ROOT, Probe, next_domain, start, stop

rclpy = pytest.importorskip("rclpy", reason="install the 'ros' extra (ros-kilted-* wheels)")
from geometry_msgs.msg import TwistStamped  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from qsft_robot.ros.profiles import RobotProfile  # noqa: E402

pytestmark = pytest.mark.slow   # the node and a probe as ROS 2 processes

SO100 = RobotProfile.load(ROOT / "configs" / "robots" / "so100.yaml")
SERVO = RobotProfile.load(ROOT / "configs" / "robots" / "servo_arm.yaml")
HZ = 5.0
# joint_state_broadcaster order (alphabetical) with a joint the profile does not drive
BROADCAST = sorted(SO100.joint_names + ["camera_tilt"])


def joint_state(pose) -> tuple[list[str], list[float]]:
    """(names, positions) of a JointState for the profile's pose `pose`, in the broadcaster's order."""
    by_name = dict(zip(SO100.joint_names, pose), camera_tilt=0.7)
    return BROADCAST, [by_name[n] for n in BROADCAST]


def twist(m: TwistStamped) -> list[float]:
    t = m.twist
    return [t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z]


def positions(m: JointTrajectory) -> np.ndarray:
    return np.asarray(m.points[0].positions, dtype=np.float64)


def arm_node(domain, profile, **kw):
    params = {"policy": "color_seek", "control_hz": HZ}
    params.update(kw)
    return start("policy_node", PKG / "config" / f"{profile}.yaml", domain=domain, **params)


def stream_joints(probe: Probe, seconds: float, pose, hz: float = 20.0) -> None:
    """JointState only (the camera is silent)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        probe.publish_joints(*joint_state(pose))
        time.sleep(1.0 / hz)


def after(probe: Probe, t: float) -> list:
    return [m for tm, m in probe.msgs["/qsft/preview"] if tm > t]


def first_status_time(probe: Probe, state: str, since: float) -> float:
    assert probe.wait_for("/qsft/status", lambda s: s["state"] == state, timeout=8, since=since), probe.status()
    return next(t for t, s in probe.msgs["/qsft/status"] if t > since and s["state"] == state)


def test_ee_delta_goes_to_moveit_servo_within_limits_and_every_stop_is_a_zero_twist():
    domain = next_domain()
    probe = Probe(domain, preview_type=TwistStamped)
    proc = arm_node(domain, "servo_arm", max_image_age=0.4)
    try:
        assert probe.wait_for("/qsft/status", timeout=30), "node did not come up"
        moving = lambda: [m for _, m in probe.msgs["/qsft/preview"] if any(twist(m))]  # noqa: E731
        full = SERVO.upper[0] * HZ
        t_end = probe.stream(8.0, hz=10, rgb=RED, until=lambda: any(twist(m)[0] >= full - 1e-9 for m in moving()))
        t_stale = first_status_time(probe, "stale", t_end)
        time.sleep(0.4)
        stale_stops = after(probe, t_stale + 0.05)
        probe.estop_pub.publish(Bool(data=True))
        t_e = first_status_time(probe, "estop", t_stale)
        probe.stream(1.0, hz=10, rgb=RED)  # fresh frames do not release a latched e-stop
        estop_stops = after(probe, t_e + 0.05)
        cmds = [m for _, m in probe.msgs["/qsft/preview"]]
        grippers = [list(m.data) for _, m in probe.msgs["/qsft/preview/gripper"]]
        assert probe.status()["action_space"] == "ee_delta" and proc.poll() is None
    finally:
        stop(proc)
        probe.close()
    assert len(moving()) >= 4 and all(m.header.frame_id == "base_link" for m in cmds)
    # linear velocity = delta x control_hz within the profile's delta limits; no rotation in this profile
    assert all(abs(v) <= u * HZ + 1e-9 for m in cmds for v, u in zip(twist(m)[:3], SERVO.upper))
    assert all(twist(m)[3:] == [0.0, 0.0, 0.0] for m in cmds)
    first = moving()[0]
    assert 0 < twist(first)[0] <= SERVO.max_rate[0] / HZ * HZ + 1e-9, twist(first)  # one tick from rest
    assert max(twist(m)[0] for m in moving()) == pytest.approx(full), "it should reach full speed"
    # color_seek opens the gripper (-1), slew-limited from rest like every dim
    assert grippers and grippers[-1] == [-1.0] and all(-1.0 <= g[0] < 0 for g in grippers), grippers
    assert stale_stops and all(twist(m) == [0.0] * 6 for m in stale_stops)
    assert estop_stops and all(twist(m) == [0.0] * 6 for m in estop_stops)


def moves(msgs, *holds) -> list[np.ndarray]:
    """The commands among `msgs`: every message that is not a stop holding one of `holds`."""
    return [positions(m) for m in msgs if not any(np.allclose(positions(m), h, rtol=0, atol=1e-9) for h in holds)]


def assert_one_tick_from(cmd: np.ndarray, pose: np.ndarray) -> None:
    """The first command after rest moves no joint more than max_rate / control_hz from the measured pose."""
    step = np.asarray(SO100.max_rate) / HZ
    assert np.all(np.abs(cmd - pose) <= step + 1e-9), (cmd, pose)


def assert_holds(msgs, pose) -> None:
    assert msgs, "no stop was published"
    for m in msgs:
        np.testing.assert_allclose(positions(m), pose, rtol=0, atol=1e-9)


def test_joint_positions_wait_for_a_joint_state_move_from_it_and_every_stop_holds_the_measured_pose():
    domain = next_domain()
    probe = Probe(domain, preview_type=JointTrajectory)
    # pan 1.5 rad, near its 1.92 limit; a 40-degree pan step asks past the limit
    pose = np.array([1.5, -0.3, 0.4, 0.2, -0.1, 0.3])
    proc = arm_node(domain, "so100", policy_args=json.dumps({"pan_step": 40.0}), max_image_age=0.5)
    try:
        assert probe.wait_for("/qsft/status", timeout=30), "node did not come up"
        probe.stream(1.5, hz=10, rgb=LEFT)  # frames, but no JointState yet
        before_joints, waiting = list(probe.msgs["/qsft/preview"]), probe.status()
        t_end = probe.stream(6.0, hz=10, rgb=LEFT, joints=joint_state(pose),
                             until=lambda: len(moves(after(probe, 0), pose)) >= 3)
        first_motion = moves(after(probe, 0), pose)
        stream_joints(probe, 1.0, pose)  # the camera goes silent, the arm keeps reporting its pose
        t_stale = first_status_time(probe, "stale", t_end)
        camera_stops = after(probe, t_stale + 0.05)

        pose2 = pose + np.array([-0.5, 0.1, -0.1, 0.1, 0.2, -0.1])  # moved meanwhile (e.g. by hand)
        t_resume = time.monotonic()
        t_end = probe.stream(6.0, hz=10, rgb=LEFT, joints=joint_state(pose2),
                             until=lambda: len(moves(after(probe, t_resume), pose, pose2)) >= 2)
        second_motion = moves(after(probe, t_resume), pose, pose2)
        probe.stream(1.2, hz=10, rgb=LEFT)  # the JointState stops; the camera does not
        t_js = first_status_time(probe, "stale_joint_state", t_end)
        joint_stale_stops = after(probe, t_js + 0.05)

        pose3 = pose2 + 0.05
        t_resume = time.monotonic()
        probe.stream(6.0, hz=10, rgb=LEFT, joints=joint_state(pose3),
                     until=lambda: len(moves(after(probe, t_resume), pose2, pose3)) >= 2)
        assert len(moves(after(probe, t_resume), pose2, pose3)) >= 2, "it should move again after the stop"
        probe.estop_pub.publish(Bool(data=True))
        t_e = first_status_time(probe, "estop", t_resume)
        probe.stream(0.8, hz=10, rgb=LEFT, joints=joint_state(pose3))
        estop_stops = after(probe, t_e + 0.05)
        cmds = [m for _, m in probe.msgs["/qsft/preview"]]
    finally:
        stop(proc)
        probe.close()
    # nothing to the arm before its pose is measured, and the status says why
    assert before_joints == [] and waiting["state"] == "no_joint_state" and "JointState" in waiting["reason"]
    # the first command from rest is at most one tick from the measured pose, toward the blob; a ramp from
    # zero could not pass max_rate / control_hz = 0.2 rad, and the pan starts at 1.5
    assert_one_tick_from(first_motion[0], pose)
    assert first_motion[0][0] > pose[0]
    np.testing.assert_allclose(first_motion[0][1:], pose[1:], rtol=0, atol=1e-9)  # color_seek pans only
    assert_one_tick_from(second_motion[0], pose2)  # after a stop: from the pose measured now
    for prev, cur in zip(first_motion, first_motion[1:]):
        assert_one_tick_from(cur, prev)
    # every command within the joint limits, one trajectory point one control period ahead, the profile's joints
    assert max(p[0] for p in first_motion) == pytest.approx(SO100.upper[0]), "clipped at the pan limit"
    for m in cmds:
        p = positions(m)
        assert np.all(p >= np.asarray(SO100.lower) - 1e-9) and np.all(p <= np.asarray(SO100.upper) + 1e-9)
        assert list(m.joint_names) == SO100.joint_names and len(m.points) == 1
        assert (m.points[0].time_from_start.sec, m.points[0].time_from_start.nanosec) == (0, 200_000_000)
    assert_holds(camera_stops, pose)
    assert_holds(joint_stale_stops, pose2)  # the last known pose
    assert_holds(estop_stops, pose3)


@pytest.mark.parametrize("profile", ["servo_arm", "so100"])
def test_sigint_while_moving_ends_with_a_stop_that_holds(profile):
    domain = next_domain()
    kind = TwistStamped if profile == "servo_arm" else JointTrajectory
    probe = Probe(domain, preview_type=kind)
    pose = np.array([0.2, -0.4, 0.6, -0.8, 1.0, 0.4])
    joints = joint_state(pose) if profile == "so100" else None
    proc = arm_node(domain, profile, enable_actuation=True, command_topic="/cmd_vel", max_image_age=5.0,
                    instruction="reach the red block")

    def moving() -> bool:
        m = probe.msgs["/cmd_vel"][-1][1] if probe.msgs["/cmd_vel"] else None
        return m is not None and (any(twist(m)) if kind is TwistStamped else not np.array_equal(positions(m), pose))

    try:
        assert probe.wait_for("/qsft/status", timeout=30), "node did not come up"
        probe.stream(6.0, hz=10, rgb=LEFT, joints=joints, until=moving)
        assert moving(), "should be moving before SIGINT (max_image_age 5 s)"
        t_sig = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    finally:
        out = stop(proc)
        probe.close()
    assert proc.returncode == 0, out[-2000:]
    last_t, last = probe.msgs["/cmd_vel"][-1]
    assert last_t > t_sig
    if kind is TwistStamped:
        assert twist(last) == [0.0] * 6
    else:
        np.testing.assert_allclose(positions(last), pose, rtol=0, atol=1e-9)


def test_a_policy_or_profile_that_does_not_fit_is_a_start_up_fault(tmp_path):
    """Exit 2 with the reason, before anything moves: a policy of another size or with other action names,
    end-effector deltas into a joint trajectory, and joint targets without a JointState topic."""
    unsafe = tmp_path / "deltas_as_joints.yaml"
    unsafe.write_text("name: old_arm\nkind: arm\narm_message: joint_trajectory\nscale: [1, 1, 1, 1]\n"
                      "lower: [-1, -1, -1, -1]\nupper: [1, 1, 1, 1]\n")
    names = list(SO100.action_names)
    cases = {
        "emits 4 action dims; profile so100_arm": dict(policy="ros_test_policies:DeclaredPolicy",
                                                        policy_args=json.dumps({"emits": 4})),
        "differ from profile so100_arm's action_names": dict(
            policy="ros_test_policies:DeclaredPolicy", policy_args=json.dumps({"names": names[::-1]})),
        "absolute joint angles": dict(robot_profile=str(unsafe)),
        "needs joint_state_topic": dict(joint_state_topic=""),
    }
    procs = {reason: arm_node(next_domain(), "so100", fault_linger_s=0.2, **kw) for reason, kw in cases.items()}
    try:
        for proc in procs.values():
            proc.wait(timeout=60)
    finally:
        outs = {reason: stop(proc) for reason, proc in procs.items()}
    for reason, proc in procs.items():
        assert proc.returncode == 2 and reason in outs[reason], (reason, outs[reason][-2000:])
    assert "fix: action_space: ee_delta with message: twist_stamped" in outs["absolute joint angles"]
