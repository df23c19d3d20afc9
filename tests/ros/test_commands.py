"""Action semantics per robot profile, without rclpy: what each action space sends, what a stop sends, the
start-up checks against the policy, and the control loop's safety rules for absolute joint targets."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from qsft_robot.ros.commands import CommandBuilder
from qsft_robot.ros.params import PROFILES
from qsft_robot.ros.profiles import ProfileError, RobotProfile
from qsft_robot.ros.safety import SafetyFilter, State, Watchdog

ROOT = Path(__file__).resolve().parents[2]
SO100_JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


def profile(name: str) -> RobotProfile:
    return RobotProfile.load(ROOT / "configs" / "robots" / f"{name}.yaml")


def write_profile(tmp_path: Path, **fields) -> Path:
    path = tmp_path / "profile.yaml"
    base = {"name": "t", "scale": [1.0] * 4, "lower": [-1.0] * 4, "upper": [1.0] * 4}
    path.write_text(json.dumps({**base, **fields}))  # JSON is YAML
    return path


# ---- profiles --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,space,message,dims", [
    ("base", "base_velocity", "twist", 2), ("arm", "ee_delta", "float64_multi_array", 4),
    ("servo_arm", "ee_delta", "twist_stamped", 4), ("so100", "joint_position", "joint_trajectory", 6)])
def test_shipped_profiles_say_what_their_actions_mean(name, space, message, dims):
    p = profile(name)
    assert (p.action_space, p.message, p.dims) == (space, message, dims)
    assert np.all(np.asarray(p.lower) < np.asarray(p.upper)) and p.max_rate is not None
    assert name in PROFILES


def test_base_and_sim_arm_keep_their_commands_and_zero_stop():
    for name, kind in (("base", "twist"), ("arm", "float64_multi_array")):
        p = profile(name)
        assert np.allclose(p.to_command(np.ones(p.dims)), p.upper)
        b = CommandBuilder(p, 5.0)
        (stop,) = b.stop(None)
        assert stop.kind == kind and stop.channel == "arm"
        f = stop.fields
        values = f["data"] if kind == "float64_multi_array" else f["linear"] + f["angular"]
        assert values == [0.0] * len(values)
    (cmd,) = CommandBuilder(profile("base"), 5.0).command(np.array([0.4, -1.0]))
    assert cmd.fields == {"linear": [0.4, 0.0, 0.0], "angular": [0.0, 0.0, -1.0]}


@pytest.mark.parametrize("fields", [
    {"kind": "arm", "arm_message": "joint_trajectory"},  # the old profile format's unsafe combination
    {"action_space": "ee_delta", "message": "joint_trajectory"}])
def test_deltas_into_a_joint_trajectory_are_refused_with_the_reason_and_the_fix(tmp_path, fields):
    with pytest.raises(ProfileError, match="absolute joint angles") as e:
        RobotProfile.load(write_profile(tmp_path, **fields))
    assert "fix: action_space: ee_delta with message: twist_stamped" in str(e.value)
    assert "joint_position with joint_names" in str(e.value)


@pytest.mark.parametrize("fields,match", [
    ({"kind": "arm", "arm_message": "float64_multi_array"}, "replaced by action_space"),
    ({"action_space": "joint_velocity", "message": "twist"}, "action_space must be one of"),
    ({"action_space": "base_velocity", "message": "float64_multi_array"}, "base_velocity is sent as twist"),
    ({"action_space": "ee_delta", "message": "twist_stamped"}, "needs frame_id"),
    ({"action_space": "ee_delta", "message": "twist_stamped", "frame_id": "tool0", "rotation": True},
     "scale needs 7 entries"),
    ({"action_space": "joint_position", "message": "joint_trajectory"}, "needs joint_names"),
    ({"action_space": "joint_position", "message": "joint_trajectory", "joint_names": ["a", "b", "c", "d"],
      "action_names": ["a"]}, "action_names needs 4 entries"),
    ({"action_space": "ee_delta", "message": "float64_multi_array", "colour": "red"}, "unexpected keyword"),
])
def test_profile_mistakes_are_refused_with_the_reason(tmp_path, fields, match):
    with pytest.raises(ProfileError, match=match):
        RobotProfile.load(write_profile(tmp_path, **fields))


def test_the_policy_must_fit_the_profile_in_size_and_names():
    p = profile("so100")
    p.check_policy(6, None)
    p.check_policy(None, None)
    p.check_policy(6, list(p.action_names))
    with pytest.raises(ProfileError, match="emits 4 action dims; profile so100_arm .joint_position. maps 6: "
                                           "shoulder_pan, shoulder_lift"):
        p.check_policy(4, None)
    swapped = [p.action_names[1], p.action_names[0], *p.action_names[2:]]
    with pytest.raises(ProfileError, match="differ from profile so100_arm's action_names"):
        p.check_policy(6, swapped)
    profile("servo_arm").check_policy(4, ["a0", "a1", "a2", "a3"])  # no action_names in the profile: size only


# ---- commands of each action space -------------------------------------------------------------------
def test_ee_delta_goes_to_moveit_servo_as_a_velocity_and_the_gripper_on_its_own_topic():
    p = profile("servo_arm")
    arm, gripper = CommandBuilder(p, 5.0).command(np.array([0.01, -0.02, 0.0, -1.0]))
    assert arm.kind == "twist_stamped" and arm.channel == "arm" and arm.fields["frame_id"] == "base_link"
    assert arm.fields["linear"] == pytest.approx([0.05, -0.1, 0.0]) and arm.fields["angular"] == [0.0, 0.0, 0.0]
    assert gripper.channel == "gripper" and gripper.kind == "float64_multi_array" and gripper.fields["data"] == [-1.0]
    (stop,) = CommandBuilder(p, 5.0).stop(None)  # zero twist; the gripper keeps its last command
    assert stop.kind == "twist_stamped" and stop.fields["linear"] == [0.0] * 3 and stop.fields["angular"] == [0.0] * 3
    p.rotation, p.gripper = True, False
    (arm,) = CommandBuilder(p, 10.0).command(np.array([0.0, 0.0, 0.01, 0.0, 0.0, 0.02]))
    assert arm.fields["linear"] == pytest.approx([0.0, 0.0, 0.1])
    assert arm.fields["angular"] == pytest.approx([0.0, 0.0, 0.2])


def test_joint_positions_go_out_as_one_trajectory_point_or_a_forward_command_and_a_stop_holds():
    p = profile("so100")
    pose = np.array([0.1, -0.2, 0.3, -0.4, 0.5, 0.6])
    (cmd,) = CommandBuilder(p, 5.0).command(pose)
    assert cmd.kind == "joint_trajectory" and cmd.fields["joint_names"] == SO100_JOINTS
    assert cmd.fields["positions"] == pose.tolist() and cmd.fields["time_from_start"] == (0, 200_000_000)
    assert CommandBuilder(p, 0.5).command(pose)[0].fields["time_from_start"] == (2, 0)
    assert CommandBuilder(p, 5.0).stop(None) == []  # no measured pose: nothing is sent
    (hold,) = CommandBuilder(p, 5.0).stop(pose)
    assert hold.fields["positions"] == pose.tolist()
    p.message = "float64_multi_array"
    assert CommandBuilder(p, 5.0).command(pose)[0].fields == {"data": pose.tolist()}
    assert CommandBuilder(p, 5.0).stop(pose)[0].fields == {"data": pose.tolist()}


def test_joint_state_positions_are_taken_by_name():
    from qsft_robot.ros.joints import positions_by_name

    names = ["gripper", "extra", *SO100_JOINTS[:-1]]
    got, err = positions_by_name(SO100_JOINTS, names, [6.0, 99.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert err is None and got.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert "lacks joints ['gripper']" in positions_by_name(SO100_JOINTS, SO100_JOINTS[:-1], [0.0] * 5)[1]
    assert "6 names but 5 positions" in positions_by_name(SO100_JOINTS, SO100_JOINTS, [0.0] * 5)[1]
    assert "NaN" in positions_by_name(SO100_JOINTS, SO100_JOINTS, [0.0] * 5 + [float("nan")])[1]


# ---- safety for absolute targets ----------------------------------------------------------------------
def test_position_slew_limit_starts_from_the_measured_pose_never_from_zero():
    f = SafetyFilter([-2.0, -2.0], [2.0, 2.0], max_rate=[1.0, 1.0], max_dt=0.2, zero_is_rest=False)
    with pytest.raises(ValueError, match="no measured pose"):
        f([0.0, 0.0], now=0.0)
    assert f([5.0, 1.0], now=0.0, rest=[1.5, 1.0]).tolist() == pytest.approx([1.7, 1.0])  # one tick from 1.5
    assert f([5.0, 1.0], now=0.2, rest=[0.0, 0.0]).tolist() == pytest.approx([1.9, 1.0])  # from the last command
    f.reset(now=1.0)  # a stop: the next ramp starts from the pose measured then
    assert f([5.0, 5.0], now=1.01, rest=[-1.0, 0.5]).tolist() == pytest.approx([-0.99, 0.51])
    f.reset(now=2.0)
    assert f([np.nan, 0.0], now=2.1, rest=[0.3, 0.3]).tolist() == pytest.approx([0.3, 0.3])  # NaN: stay put


def test_watchdog_needs_a_fresh_joint_state_for_joint_targets():
    w = Watchdog(max_image_age=0.5, needs_joint_state=True)
    assert w.tick(1.0, 0.9, False) == State.NO_JOINT_STATE  # frames, but no JointState yet
    assert w.tick(1.1, None, False, joint_state_time=1.05) == State.WAITING
    assert w.tick(1.2, 1.15, False, joint_state_time=1.1) == State.RUNNING
    assert w.tick(2.0, 1.95, False, joint_state_time=1.1) == State.STALE_JOINT_STATE
    assert w.tick(2.1, 2.05, True, joint_state_time=1.1) == State.ESTOP


class Recorder:
    """The control loop's outputs, kept in lists (what the node would publish)."""

    def __init__(self):
        self.sent, self.statuses, self.sources, self.logs = [], [], [], []

    def send(self, messages):
        self.sent.extend(messages)

    def status(self, data):
        self.statuses.append(data)

    def source(self, data):
        self.sources.append(data)

    def log(self, level, text, throttle_s=0.0):
        self.logs.append((level, text))


def so100_loop(**params):
    from qsft_robot.ros.control_loop import ControlLoop

    p = {"control_hz": 5.0, "max_image_age": 0.5, "watchdog_hz": 50.0, "enable_actuation": False, **params}
    out = Recorder()
    return ControlLoop(profile("so100"), p, out), out


def test_joint_target_loop_sends_nothing_before_a_joint_state_then_holds_the_measured_pose():
    loop, out = so100_loop()
    loop.instruction = "turn toward the red block"
    loop.store_frame(np.zeros((4, 4, 3), np.uint8), time.monotonic(), 0, time.monotonic())
    loop.on_watchdog()
    loop.press_estop()
    loop.close()
    assert out.sent == [] and out.statuses[-1]["state"] == "no_joint_state"
    assert "JointState" in out.statuses[-1]["reason"]

    loop, out = so100_loop()
    pose = [0.11, -0.22, 0.33, -0.44, 0.55, 0.66]
    assert loop.store_joints(list(reversed(SO100_JOINTS)), pose[::-1], time.monotonic(), 1) is None
    loop.press_estop()
    assert [m.fields["positions"] for m in out.sent] == [pose]  # exactly the measured values
    assert "lacks joints" in loop.store_joints(["x"], [0.0], time.monotonic(), 2)


def test_joint_target_loop_moves_one_tick_from_the_measured_pose_and_a_stale_joint_state_stops_it():
    loop, out = so100_loop()
    loop.instruction = "go"
    pose = np.array([1.5, 0.1, 0.2, 0.3, 0.4, 0.5])
    now = time.monotonic()
    loop.store_joints(SO100_JOINTS, pose.tolist(), now, 1)
    loop.store_frame(np.zeros((4, 4, 3), np.uint8), now, 7, now)
    job = loop.take_job()
    assert job is not None and job.states == pytest.approx(np.degrees(pose), rel=1e-12)  # in the policy's units
    loop.finish_job(job, pose + 1.0, now, time.monotonic())
    (cmd,) = out.sent
    step = np.asarray(loop.profile.max_rate) / 5.0
    assert np.all(np.abs(np.asarray(cmd.fields["positions"]) - pose) <= step + 1e-9)
    assert cmd.fields["positions"][0] == pytest.approx(1.7) and max(cmd.fields["positions"]) <= 1.91986
    # the JointState goes stale (frames still fresh): no inference, and the watchdog holds the last known pose
    loop.store_joints(SO100_JOINTS, pose.tolist(), now - 1.0, 2)
    loop.store_frame(np.zeros((4, 4, 3), np.uint8), time.monotonic(), 8, time.monotonic())
    assert loop.take_job() is None
    loop.on_watchdog()
    assert loop.watchdog.state == State.STALE_JOINT_STATE and out.sent[-1].fields["positions"] == pose.tolist()


# ---- the bring-up policy and the loader ------------------------------------------------------------
def test_color_seek_on_joints_holds_the_measured_pose_and_pans_a_bounded_step_toward_the_blob():
    from qsft_robot.ros.scripted_policy import ColorSeekPolicy

    pol = ColorSeekPolicy(6, action_space="joint_position", pan_step=5.0)
    img = np.zeros((1, 1, 64, 64, 3), np.uint8)
    img[0, 0, 20:44, 0:10] = (230, 25, 25)  # on the left
    state = np.array([[10.0, 20.0, 30.0, 40.0, 50.0, 60.0]])
    out = pol.act(img, ["turn toward the red block"], state)
    assert out[0, 1:].tolist() == state[0, 1:].tolist() and 10.0 < out[0, 0] <= 15.0
    assert pol.act(np.zeros_like(img), ["turn toward the red block"], state).tolist() == state.tolist()  # none
    with pytest.raises(ValueError, match="needs the measured joints"):
        pol.act(img, ["red"], None)


def test_loader_passes_the_action_space_to_policies_that_take_it():
    from qsft_robot.ros.policy_loader import load_policy, policy_action_names

    pol = load_policy("color_seek", "", "", "cpu", action_dim=6, action_space="joint_position")
    assert pol.action_space == "joint_position" and pol.action_dim == 6
    slow = load_policy("qsft_robot.ros.fault_policies:SlowPolicy", "", "", "cpu", action_dim=6,
                       policy_args='{"delay": 0}', action_space="joint_position")
    assert slow.action_space == "joint_position"
    old_style = load_policy("ros_test_policies:DeclaredPolicy", "", "", "cpu", action_dim=4,
                            policy_args='{"names": ["a", "b", "c", "d"]}', action_space="ee_delta")
    assert old_style.action_dim == 4 and policy_action_names(old_style) == ["a", "b", "c", "d"]


# ---- action names from the dataset, through the checkpoint's tokenizer ----------------------------------
def test_action_names_go_from_the_lerobot_dataset_into_the_tokenizer_json(tmp_path):
    from qsft_robot.data.action_tokenizer import ActionTokenizer
    from qsft_robot.data.episode import Episode, common_action_names
    from qsft_robot.data.lerobot_reader import action_names, read_lerobot
    from qsft_robot.data.lerobot_writer import write_lerobot_v30
    from qsft_robot.ros.policy_loader import policy_action_names

    rng = np.random.default_rng(0)
    eps = [Episode(images={"front": rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)},
                   actions=rng.normal(size=(4, 6)).astype(np.float32), instruction="pick")]
    root = write_lerobot_v30(eps, tmp_path / "ds", fps=10)
    info = json.loads((root / "meta" / "info.json").read_text())
    names = list(profile("so100").action_names)
    info["features"]["action"]["names"] = names  # as LeRobot's SO-101 recordings name them
    (root / "meta" / "info.json").write_text(json.dumps(info))
    read, _ = read_lerobot(root)
    assert common_action_names(read) == names
    tok = ActionTokenizer.fit(np.concatenate([e.actions for e in read]), 16, names=common_action_names(read))
    tok.save(tmp_path / "action_tokenizer.json")
    loaded = ActionTokenizer.load(tmp_path / "action_tokenizer.json")
    assert loaded.names == names

    class Checkpoint:  # what algo.policy's loaded policy exposes
        action_tokenizer = loaded

    assert policy_action_names(Checkpoint()) == names
    profile("so100").check_policy(loaded.num_dims, policy_action_names(Checkpoint()))
    older = json.loads((tmp_path / "action_tokenizer.json").read_text())
    del older["names"]  # a checkpoint from before names were kept
    (tmp_path / "old.json").write_text(json.dumps(older))
    assert ActionTokenizer.load(tmp_path / "old.json").names is None
    assert action_names({"features": {"action": {"shape": [2], "names": {"motors": ["l", "r"]}}}}) == ["l", "r"]
    assert action_names({"features": {"action": {"shape": [3], "names": ["l", "r"]}}}) is None
    assert action_names({"features": {"action": {"shape": [2], "names": None}}}) is None
    with pytest.raises(ValueError, match="2 action names for 1 action dims"):
        ActionTokenizer(low=[0.0], high=[1.0], bins=[4], names=["a", "b"])
