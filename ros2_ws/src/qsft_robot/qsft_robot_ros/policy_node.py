"""
The Q-SFT policy node: latest camera frame in, safe action commands out, at most control_hz.

This module is the ROS wiring only: parameters, topics, and message <-> plain value conversion. What
the node decides lives without rclpy in qsft_robot.ros (unit-tested there): the control loop (inputs,
watchdog, stops, faults, status), the inference worker, the commands of each action space.

Two threads keep safety independent of inference:

* the executor thread (a SingleThreadedExecutor) runs every ROS callback, all of them short:
  safety (watchdog timer, e-stop, status) never waits for the policy. Every 1/watchdog_hz it stops the
  robot when the newest frame is older than max_image_age, or the frame behind the last command is
  older than max_image_age + 1/control_hz (the command was fresh when published and the next one is
  due a control period later: only an overdue one stops the robot, so slow inference is no stop-and-go).
  For absolute joint targets the newest JointState must be fresh too, and a stop holds the measured pose.
  Inputs (image, instruction, joint state) store the newest values and wake inference.
* the inference thread (qsft_robot.ros.inference_worker) runs the policy on the newest frame, unless
  that frame is already older than max_image_age; a result whose frame has gone stale meanwhile is
  discarded, never published.

Why not callback groups on rclpy's MultiThreadedExecutor: its Python wait loop
delivered camera frames 0.1-3 s late on an idle 2-core machine (lockstep sim through ROS: answers p50
104 ms, 14-23 one-second re-sends in 6 episodes); the same node on a SingleThreadedExecutor answered
in p50 4.6-8.4 ms with no re-send (tests/ros/test_sim_lockstep.py reports both numbers).

A policy exception is fatal by design: stop commands and a `fault` status (with the reason) go out for
fault_linger_s, then the node exits with status 3 (2 when the policy cannot be loaded or does not fit
the robot profile), so a supervisor (launch) sees it. An exception in any other callback ends the
executor (or the inference thread): the same stop + fault status (sent from the main thread once the
executor is gone), then exit status 4. With enable_actuation false (the default) commands go to a
preview topic.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from builtin_interfaces.msg import Duration as DurationMsg
from geometry_msgs.msg import Twist, TwistStamped, Vector3
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.duration import Duration
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from qsft_robot.ros.control_loop import EXIT_CALLBACK_FAULT, EXIT_LOAD_FAILED, ControlLoop
from qsft_robot.ros.image_conv import ImageFormatError, compressed_to_rgb, image_to_rgb
from qsft_robot.ros.inference_worker import InferenceWorker
from qsft_robot.ros.inputs import bound_instruction, frame_origin, old_stamp_warning, stamp_age
from qsft_robot.ros.params import PARAM_SPECS, PARAMS, RUNTIME_PARAMS, timing_warning
from qsft_robot.ros.policy_loader import load_policy, policy_action_dim, policy_action_names
from qsft_robot.ros.profiles import RobotProfile
from qsft_robot_ros import runtime

MESSAGE_TYPES = {"twist": Twist, "twist_stamped": TwistStamped, "float64_multi_array": Float64MultiArray,
                 "joint_trajectory": JointTrajectory}


def profiles_dir() -> Path:
    """Installed: <share>/qsft_robot/config/robots (colcon); from source: the repository's configs."""
    try:
        from ament_index_python.packages import get_package_share_directory
        installed = Path(get_package_share_directory("qsft_robot")) / "config" / "robots"
        if installed.is_dir():
            return installed
    except (ImportError, LookupError, ValueError, OSError):  # OSError: AMENT_PREFIX_PATH unset
        pass
    return Path(__file__).resolve().parents[4] / "configs" / "robots"


def resolve_profile(name: str) -> Path:
    p = Path(name)
    return p if p.suffix in (".yaml", ".yml") else profiles_dir() / f"{name}.yaml"


def image_qos(reliability: str, depth: int) -> QoSProfile:
    """
    Build the camera subscription's QoS; reliable by default.

    A best-effort subscriber loses most fragments of 640x480 frames over UDP, and a reliable one also
    matches reliable publishers (image_transport's default).
    """
    if reliability not in ("reliable", "best_effort"):
        raise ValueError(f"image_reliability must be reliable | best_effort, not {reliability!r}")
    rel = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(reliability=rel, history=HistoryPolicy.KEEP_LAST, depth=max(1, int(depth)))


def to_ros(kind: str, fields: dict, stamp):
    """Build the ROS message for a command's plain fields (qsft_robot.ros.commands)."""
    if kind in ("twist", "twist_stamped"):
        twist = Twist(linear=Vector3(x=fields["linear"][0], y=fields["linear"][1], z=fields["linear"][2]),
                      angular=Vector3(x=fields["angular"][0], y=fields["angular"][1], z=fields["angular"][2]))
        if kind == "twist":
            return twist
        msg = TwistStamped(twist=twist)
        msg.header.stamp, msg.header.frame_id = stamp, fields["frame_id"]
        return msg
    if kind == "joint_trajectory":
        sec, nanosec = fields["time_from_start"]
        point = JointTrajectoryPoint(positions=fields["positions"],
                                     time_from_start=DurationMsg(sec=sec, nanosec=nanosec))
        return JointTrajectory(joint_names=fields["joint_names"], points=[point])
    return Float64MultiArray(data=fields["data"])


class Outputs:
    """The control loop's outputs as ROS publishers and log lines."""

    def __init__(self, node: "PolicyNode"):
        self.node = node
        self.logged: dict[str, float] = {}  # kind of message -> when it was last logged (throttling)

    def send(self, messages) -> None:
        stamp = self.node.get_clock().now().to_msg()
        for m in messages:
            pub = self.node.cmd_pub if m.channel == "arm" else self.node.gripper_pub
            if pub is not None:
                pub.publish(to_ros(m.kind, m.fields, stamp))

    def status(self, data: dict) -> None:
        self.node.status_pub.publish(String(data=json.dumps(data)))

    def source(self, data: dict) -> None:
        if self.node.source_pub is not None:
            self.node.source_pub.publish(String(data=json.dumps(data)))

    def log(self, level: str, text: str, throttle_s: float = 0.0) -> None:
        """
        Log at `level`, at most once per throttle_s for each kind of message (its text up to the first colon).

        rclpy keys its own throttling and severity by call site, which here is one for every message:
        hence the throttle here and one call line per severity.
        """
        kind, now = text.split(":")[0], time.monotonic()
        if throttle_s and now - self.logged.get(kind, -1e9) < throttle_s:
            return
        self.logged[kind] = now
        logger = self.node.get_logger()
        if level == "error":
            logger.error(text)
        elif level == "warning":
            logger.warning(text)
        else:
            logger.info(text)


class PolicyNode(Node):
    loop_class = ControlLoop  # the test-only fault-injection node swaps in a subclass

    def __init__(self):
        super().__init__("qsft_policy")
        self._read_parameters()
        self.loop = self.loop_class(self.profile, self.p, Outputs(self))
        self.loop.instruction = self._bounded(self.p["instruction"])
        self._create_publishers()
        self._load_policy()
        self._create_inputs()
        self._log_startup()

    # ---- start-up: the order matters (a load fault needs the loop and the publishers) -------------
    def _read_parameters(self) -> None:
        """Declare every parameter; load the robot profile and refuse settings it cannot run with."""
        for k, (v, desc) in PARAM_SPECS.items():
            self.declare_parameter(k, v, ParameterDescriptor(description=desc))
        self.p = {k: self.get_parameter(k).value for k in PARAMS}
        self.profile = RobotProfile.load(resolve_profile(self.p["robot_profile"]))
        if self.profile.holds_position and not self.p["joint_state_topic"]:
            raise ValueError(f"profile {self.profile.name} sends absolute joint positions: it needs "
                             "joint_state_topic (the measured pose a stop holds and the slew limit starts from)")

    def _topic(self, robot_topic: str, preview_suffix: str = "") -> str:
        """Name the robot's topic only with enable_actuation, else the preview topic (dry run)."""
        return robot_topic if self.p["enable_actuation"] else self.p["preview_topic"] + preview_suffix

    def _create_publishers(self) -> None:
        """Create the publishers before the policy loads: a load failure must stop + report."""
        p, prof = self.p, self.profile
        self.cmd_pub = self.create_publisher(MESSAGE_TYPES[prof.message], self._topic(p["command_topic"]), 10)
        self.gripper_pub = None
        if prof.message == "twist_stamped" and prof.gripper:
            topic = self._topic(p["gripper_topic"], "/gripper")
            if topic:
                self.gripper_pub = self.create_publisher(Float64MultiArray, topic, 10)
        self.status_pub = self.create_publisher(String, p["status_topic"], 10)
        self.source_pub = (self.create_publisher(String, p["command_source_topic"], 10)
                           if p["command_source_topic"] else None)

    def _load_policy(self) -> None:
        """Load the policy and check its actions against the profile; any failure is a load fault (exit 2)."""
        p = self.p
        try:
            policy = load_policy(p["policy"], p["checkpoint"], p["mode"], p["device"], action_dim=self.profile.dims,
                                 policy_args=p["policy_args"], action_space=self.profile.action_space)
            self.profile.check_policy(policy_action_dim(policy), policy_action_names(policy))
        except Exception as e:  # noqa: BLE001 - any load error is reported as a fault, never swallowed
            self.loop.fail(f"policy could not be loaded: {type(e).__name__}: {e}", EXIT_LOAD_FAILED)
            return
        self.loop.policy = policy

    def _create_inputs(self) -> None:
        """Subscribe to the inputs, start the watchdog and the inference thread; the policy is in place by now."""
        p = self.p
        qos = image_qos(p["image_reliability"], p["image_depth"])
        events = SubscriptionEventCallbacks(incompatible_qos=self.on_incompatible_qos)
        if p["compressed"]:
            self.create_subscription(CompressedImage, p["image_topic"], self.on_compressed, qos,
                                     event_callbacks=events)
        else:
            self.create_subscription(Image, p["image_topic"], self.on_image, qos, event_callbacks=events)
        self.create_subscription(String, p["instruction_topic"], self.on_instruction, 10)
        if p["joint_state_topic"]:
            self.create_subscription(JointState, p["joint_state_topic"], self.on_joints, 10)
        self.create_subscription(Bool, p["estop_topic"], self.on_estop, 10)
        self.create_timer(1.0 / float(p["watchdog_hz"]), self.on_watchdog)
        if self.loop.policy is not None:
            self.worker = InferenceWorker(self.loop, self.loop.policy)
            self.worker.start()
        self.add_on_set_parameters_callback(self.on_set_parameters)
        self.add_post_set_parameters_callback(self.on_parameters_set)

    def _log_startup(self) -> None:
        """Say what the node drives and where, and warn about risky timing."""
        p, prof = self.p, self.profile
        topic = self._topic(p["command_topic"])
        self.get_logger().info(f"qsft policy node: profile {prof.name} ({prof.action_space} as {prof.message}), "
                               f"policy {p['policy']}, "
                               f"{'ACTUATING on ' + topic if p['enable_actuation'] else 'dry run on ' + topic}")
        if prof.message == "twist_stamped" and prof.gripper and self.gripper_pub is None:
            self.get_logger().warning("gripper_topic is empty: the policy's gripper dim is not sent")
        warning = timing_warning(self.loop.max_age, float(p["control_hz"]))
        if warning:
            self.get_logger().warning(warning)

    # ---- inputs -------------------------------------------------------------------------------
    def _bounded(self, text: str) -> str:
        text, warning = bound_instruction(text, int(self.p["max_instruction_chars"]))
        if warning:
            self.loop.count("truncated_instructions")
            self.get_logger().warning(warning)
        return text

    def _origin(self, stamp) -> tuple[float, int]:
        """Return when a stamped input counts as taken (monotonic) and its stamp in ns; warn about odd stamps."""
        arrival = time.monotonic()
        stamp_ns = stamp.sec * 1_000_000_000 + stamp.nanosec
        age = stamp_age(self.get_clock().now().nanoseconds, stamp_ns)
        origin, warning = frame_origin(arrival, age, float(self.p["stamp_skew_tolerance"]))
        warning = warning or old_stamp_warning(age, self.loop.max_age)
        if warning:
            self.get_logger().warning(warning, throttle_duration_sec=5.0)
        return origin, stamp_ns

    def _store(self, img: np.ndarray, stamp) -> None:
        arrival = time.monotonic()
        origin, stamp_ns = self._origin(stamp)
        self.loop.store_frame(img, origin, stamp_ns, arrival)

    def _malformed(self, e: ImageFormatError) -> None:
        self.loop.count("malformed")
        self.get_logger().warning(f"malformed image skipped ({self.loop.counts['malformed']} so far): {e}",
                                  throttle_duration_sec=2.0)

    def on_image(self, msg: Image) -> None:
        try:
            img = image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                               max_pixels=int(self.p["max_image_pixels"]))
        except ImageFormatError as e:
            self._malformed(e)
            return
        self._store(img, msg.header.stamp)

    def on_compressed(self, msg: CompressedImage) -> None:
        try:
            img = compressed_to_rgb(msg.format, msg.data, max_pixels=int(self.p["max_image_pixels"]))
        except ImageFormatError as e:
            self._malformed(e)
            return
        self._store(img, msg.header.stamp)

    def on_incompatible_qos(self, info) -> None:
        self.get_logger().error(
            f"camera publisher QoS incompatible with image_reliability={self.p['image_reliability']} "
            f"(policy id {info.last_policy_kind}): no frames arrive; a best-effort camera needs "
            "image_reliability:=best_effort", throttle_duration_sec=5.0)

    def on_instruction(self, msg: String) -> None:
        text = self._bounded(msg.data)
        self.loop.set_instruction(text)
        self.get_logger().info(f"instruction: {text[:80]!r}{'...' if len(text) > 80 else ''}")

    def on_joints(self, msg: JointState) -> None:
        origin, stamp_ns = self._origin(msg.header.stamp)
        error = self.loop.store_joints(list(msg.name), list(msg.position), origin, stamp_ns)
        if error:
            self.get_logger().warning(f"JointState not usable: {error}", throttle_duration_sec=2.0)

    def on_set_parameters(self, params) -> SetParametersResult:
        """
        Accept run-time changes of the instruction only.

        Everything else shapes topics, limits or the policy; changing it under a moving robot is
        refused with the reason.
        """
        for prm in params:
            if prm.name not in PARAMS:
                continue
            if prm.name not in RUNTIME_PARAMS:
                return SetParametersResult(successful=False, reason=(
                    f"{prm.name} is read at start-up only (it sets topics, limits or the policy): restart the "
                    f"node to change it; at run time only {', '.join(sorted(RUNTIME_PARAMS))} may change"))
            if not isinstance(prm.value, str):
                return SetParametersResult(successful=False, reason="instruction must be a string")
            cap = int(self.p["max_instruction_chars"])
            if len(prm.value) > cap:
                return SetParametersResult(successful=False, reason=(
                    f"instruction of {len(prm.value)} characters exceeds max_instruction_chars={cap}"))
        return SetParametersResult(successful=True)

    def on_parameters_set(self, params) -> None:
        for prm in params:
            if prm.name == "instruction":
                self.loop.set_instruction(prm.value)
                self.get_logger().info(f"instruction parameter set: {prm.value[:80]!r}")

    # ---- safety: never waits for inference ------------------------------------------------------
    def on_estop(self, msg: Bool) -> None:
        if msg.data:
            self.loop.press_estop()

    def on_watchdog(self) -> None:
        self.loop.on_watchdog()


def main(args=None, node_class: type[PolicyNode] = PolicyNode) -> None:
    stopping = runtime.init(args)
    try:
        node = node_class()
    except Exception as e:  # noqa: BLE001 - e.g. a missing or unsafe robot profile: say why and exit non-zero
        rclpy.logging.get_logger("qsft_policy").fatal(f"cannot start: {type(e).__name__}: {e}")
        rclpy.try_shutdown()
        sys.exit(EXIT_LOAD_FAILED)
    loop = node.loop
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = runtime.start_spinner(executor, lambda reason: loop.fail(reason, EXIT_CALLBACK_FAULT),
                                    node.get_logger())
    while not stopping.is_set() and loop.exit_code is None and spinner.is_alive():
        stopping.wait(0.1)  # the main thread only waits for a signal, a fault or a dead spinner
    if not spinner.is_alive() and loop.exit_code is None and not stopping.is_set():
        loop.fail("the executor stopped spinning", EXIT_CALLBACK_FAULT)
    if loop.exit_code is not None and not stopping.is_set():
        end = time.monotonic() + float(node.p["fault_linger_s"])
        while not stopping.wait(min(loop.period, 0.1)) and time.monotonic() < end:
            if not spinner.is_alive():  # the watchdog died with the executor: stop + fault status from here
                loop.heartbeat()
    code = loop.exit_code or 0
    loop.close()
    # reliable QoS: wait (bounded) until every subscriber has acknowledged the final stop
    if not node.cmd_pub.wait_for_all_acked(Duration(seconds=1.0)):
        node.get_logger().warning("final stop not acknowledged by every subscriber within 1 s")
    runtime.finish(node, executor, spinner, code, busy=loop.inference_busy)


if __name__ == "__main__":
    main()
