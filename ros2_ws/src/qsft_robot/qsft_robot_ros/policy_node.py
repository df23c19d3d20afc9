"""
The Q-SFT policy node: latest camera frame in, safe action commands out, at most control_hz.

Two threads keep safety independent of inference:

* the executor thread (a SingleThreadedExecutor) runs every ROS callback, all of them short:
  safety (watchdog timer, e-stop, status) never waits for the policy. Every 1/watchdog_hz it stops the
  robot when the newest frame is older than max_image_age, or the frame behind the last command is
  older than max_image_age + 1/control_hz (the command was fresh when published and the next one is
  due a control period later: only an overdue one stops the robot, so slow inference is no stop-and-go).
  Inputs (image, instruction, joint state) store the newest values and wake inference.
* the inference thread (a plain thread, woken by a threading.Event) runs the policy on the newest
  frame, unless that frame is already older than max_image_age; a result whose frame has gone stale
  meanwhile is discarded, never published.
  A frame left unseen by an idle inference for a whole watchdog period is a lost wake-up: the watchdog
  wakes inference again (`rewakes` in the status).

Why not callback groups on rclpy's MultiThreadedExecutor (the earlier design): its Python wait loop
delivered camera frames 0.1-3 s late on an idle 2-core machine (lockstep sim through ROS: answers p50
104 ms, 14-23 one-second re-sends in 6 episodes); the same node on a SingleThreadedExecutor answered
in p50 4.6-8.4 ms with no re-send (tests/test_ros_sim_lockstep.py reports both numbers).

A policy exception is fatal by design: stop commands and a `fault` status (with the reason) go out for
fault_linger_s, then the node exits with status 3 (2 when the policy cannot even be loaded), so a
supervisor (launch) sees it. An exception in any other callback ends the executor (or the inference
thread): the same stop + fault status (sent from the main thread once the executor is gone), then exit
status 4. With enable_actuation false (the
default) commands go to a preview topic.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from geometry_msgs.msg import Twist
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.duration import Duration
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from qsft_robot.ros.image_conv import ImageFormatError, compressed_to_rgb, image_to_rgb
from qsft_robot.ros.inputs import bound_instruction, frame_origin, old_stamp_warning, stamp_age
from qsft_robot.ros.params import PARAM_SPECS, PARAMS, RUNTIME_PARAMS, late_bound, parse_fault, timing_warning
from qsft_robot.ros.policy_loader import load_policy, policy_action_dim
from qsft_robot.ros.profiles import RobotProfile
from qsft_robot.ros.safety import SafetyFilter, State, Watchdog
from qsft_robot_ros import runtime

EXIT_LOAD_FAILED = 2
EXIT_POLICY_FAULT = 3
EXIT_CALLBACK_FAULT = 4  # a callback other than the policy call raised; the executor stopped


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


# The parameter table (PARAM_SPECS, PARAMS, RUNTIME_PARAMS) lives in qsft_robot.ros.params, which the launch
# file reads too: every parameter is a launch argument with the same description.


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


class PolicyNode(Node):
    def __init__(self):
        super().__init__("qsft_policy")
        self._read_parameters()
        self._init_state()
        self._create_publishers()
        self._load_policy()
        self._create_inputs()
        self._log_startup()

    # ---- start-up: the order matters (fail() needs the state and the publishers) ----------------
    def _read_parameters(self) -> None:
        """Declare every parameter, then build what they fix for the node's life: profile, limits, watchdog."""
        for k, (v, desc) in PARAM_SPECS.items():
            self.declare_parameter(k, v, ParameterDescriptor(description=desc))
        p = {k: self.get_parameter(k).value for k in PARAMS}
        self.p = p
        self.profile = RobotProfile.load(resolve_profile(p["robot_profile"]))
        self.period = 1.0 / float(p["control_hz"])
        self.max_age = float(p["max_image_age"])
        self.safety = SafetyFilter(self.profile.lower, self.profile.upper, self.profile.max_rate, max_dt=self.period)
        self.late_age = late_bound(self.max_age, float(p["control_hz"]))
        self.watchdog = Watchdog(max_image_age=self.max_age, late_age=self.late_age)
        self.fault_spec = parse_fault(p["inject_fault"])
        self.fault_calls = 0

    def _init_state(self) -> None:
        """Set the state the two threads share, guarded by `lock` (taken for short, never during inference)."""
        self.lock = threading.Lock()
        self.frame: np.ndarray | None = None
        self.frame_origin: float | None = None  # monotonic time the newest frame counts as taken
        self.frame_stamp_ns = 0                 # its header.stamp (0: unset)
        self.frame_seq = 0
        self.acted_seq = 0
        self.command_origin: float | None = None  # origin of the frame behind the last published command
        self.joints: np.ndarray | None = None
        self.joints_stamp_ns = 0
        self.estop = False
        self.fault: str | None = None
        self.exit_code: int | None = None
        self.closing = False
        self.inference_busy = False
        self.last_act = -1e9
        self.last_stop = -1e9
        self.last_status = -1e9
        self.watchdog_stop: dict | None = None  # why and how late the last watchdog stop went out
        # skipped_stale: frames already older than max_image_age when inference could start (never run);
        # discarded_stale: results whose frame went stale during inference (never published);
        # rewakes: frames the inference wake-up missed, acted on after the watchdog woke it again
        self.counts = {"frames": 0, "dropped_frames": 0, "malformed": 0, "actions": 0, "stops": 0,
                       "skipped_stale": 0, "discarded_stale": 0, "truncated_instructions": 0, "rewakes": 0}
        self.frame_arrival = 0.0        # monotonic arrival of the newest frame
        self.latency_ms = 0.0           # the policy's inference for the last action
        self.wait_ms = 0.0              # frame received -> inference started
        self.frame_to_command_ms = 0.0  # frame received -> command published: what the robot feels
        self.tick_times: list[float] = []
        self.instruction = self._bounded(self.p["instruction"])

    def _command_topic(self) -> str:
        """Name the commands' topic: the robot's only with enable_actuation, else the preview topic (dry run)."""
        return self.p["command_topic"] if self.p["enable_actuation"] else self.p["preview_topic"]

    def _create_publishers(self) -> None:
        """Create the publishers before the policy loads: a load failure must stop + report."""
        p = self.p

        msg_type = Twist if self.profile.kind == "base" else (
            JointTrajectory if self.profile.arm_message == "joint_trajectory" else Float64MultiArray)
        self.cmd_pub = self.create_publisher(msg_type, self._command_topic(), 10)
        self.status_pub = self.create_publisher(String, p["status_topic"], 10)
        self.source_pub = (self.create_publisher(String, p["command_source_topic"], 10)
                           if p["command_source_topic"] else None)

    def _load_policy(self) -> None:
        """Load the policy and check its action size against the profile; any failure is a load fault (exit 2)."""
        p = self.p
        self.policy = None
        try:
            self.policy = load_policy(p["policy"], p["checkpoint"], p["mode"], p["device"],
                                      action_dim=len(self.profile.scale), policy_args=p["policy_args"])
            dim = policy_action_dim(self.policy)
            if dim is not None and dim != len(self.profile.scale):
                raise ValueError(f"policy emits {dim} action dims, profile {self.profile.name} maps "
                                 f"{len(self.profile.scale)}")
        except Exception as e:  # noqa: BLE001 - any load error is reported as a fault, never swallowed
            self.fail(f"policy could not be loaded: {type(e).__name__}: {e}", EXIT_LOAD_FAILED)

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
        self.frame_ready = threading.Event()
        self.inference_thread = threading.Thread(target=self._inference_loop, name="inference", daemon=True)
        self.inference_thread.start()
        self.add_on_set_parameters_callback(self.on_set_parameters)
        self.add_post_set_parameters_callback(self.on_parameters_set)

    def _log_startup(self) -> None:
        """Say what the node drives and where, and warn about risky timing and armed test faults."""
        p = self.p
        topic = self._command_topic()
        self.get_logger().info(f"qsft policy node: profile {self.profile.name}, policy {p['policy']}, "
                               f"{'ACTUATING on ' + topic if p['enable_actuation'] else 'dry run on ' + topic}")
        warning = timing_warning(self.max_age, float(p["control_hz"]))
        if warning:
            self.get_logger().warning(warning)
        if self.fault_spec:
            self.get_logger().warning(f"TEST FAULT INJECTION armed: inject_fault={p['inject_fault']!r}")

    def _inject(self, callback: str) -> bool:
        """
        Apply inject_fault (tests only) to `callback`.

        Raise on its n-th call, as a bug there would; for "wakeup", return True on the n-th call
        (that frame's inference wake-up is then dropped).
        """
        if self.fault_spec is not None and self.fault_spec[0] == callback:
            self.fault_calls += 1
            if self.fault_calls == self.fault_spec[1]:
                if callback == "wakeup":
                    return True
                raise RuntimeError(f"injected fault in the {callback} callback (call {self.fault_calls})")
        return False

    # ---- inputs -------------------------------------------------------------------------------
    def _bounded(self, text: str) -> str:
        text, warning = bound_instruction(text, int(self.p["max_instruction_chars"]))
        if warning:
            self.counts["truncated_instructions"] += 1
            self.get_logger().warning(warning)
        return text

    def _store(self, img: np.ndarray, stamp) -> None:
        arrival = time.monotonic()
        stamp_ns = stamp.sec * 1_000_000_000 + stamp.nanosec
        age = stamp_age(self.get_clock().now().nanoseconds, stamp_ns)
        origin, warning = frame_origin(arrival, age, float(self.p["stamp_skew_tolerance"]))
        warning = warning or old_stamp_warning(age, self.max_age)
        if warning:
            self.get_logger().warning(warning, throttle_duration_sec=5.0)
        with self.lock:
            if self.frame is not None and self.acted_seq < self.frame_seq:
                self.counts["dropped_frames"] += 1  # replaced before the policy used it (latest only)
            self.frame, self.frame_origin, self.frame_stamp_ns = img, origin, stamp_ns
            self.frame_arrival = arrival
            self.frame_seq += 1
            self.counts["frames"] += 1
        if not self._inject("wakeup"):
            self.frame_ready.set()

    def _malformed(self, e: ImageFormatError) -> None:
        self.counts["malformed"] += 1
        self.get_logger().warning(f"malformed image skipped ({self.counts['malformed']} so far): {e}",
                                  throttle_duration_sec=2.0)

    def on_image(self, msg: Image) -> None:
        self._inject("image")
        try:
            img = image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                               max_pixels=int(self.p["max_image_pixels"]))
        except ImageFormatError as e:
            self._malformed(e)
            return
        self._store(img, msg.header.stamp)

    def on_compressed(self, msg: CompressedImage) -> None:
        self._inject("image")
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
        with self.lock:
            self.instruction = text
        self.get_logger().info(f"instruction: {text[:80]!r}{'...' if len(text) > 80 else ''}")

    def on_joints(self, msg: JointState) -> None:
        joints = np.asarray(msg.position, dtype=np.float32)
        with self.lock:
            self.joints, self.joints_stamp_ns = joints, msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

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
                with self.lock:
                    self.instruction = prm.value
                self.get_logger().info(f"instruction parameter set: {prm.value[:80]!r}")

    # ---- commands -----------------------------------------------------------------------------
    def publish_command(self, command: np.ndarray) -> None:
        f = self.profile.command_fields(command)
        if f["type"] == "twist":
            msg = Twist()
            msg.linear.x, msg.angular.z = f["linear_x"], f["angular_z"]
        elif f["type"] == "joint_trajectory":
            msg = JointTrajectory()
            msg.joint_names = f["joint_names"]
            msg.points = [JointTrajectoryPoint(positions=f["positions"])]
        else:
            msg = Float64MultiArray(data=f["data"])
        self.cmd_pub.publish(msg)

    def _stop_locked(self, now: float) -> None:
        """Stop at once (never slew-limited); the next command ramps up from zero."""
        self.safety.reset(now)
        self.publish_command(self.profile.stop_command())
        self.counts["stops"] += 1
        self.last_stop = now

    def fail(self, reason: str, exit_code: int = EXIT_POLICY_FAULT) -> None:
        """Latch a fault: stop now, report it, and let main() exit non-zero after fault_linger_s."""
        with self.lock:
            if self.fault is None:
                self.fault, self.exit_code = reason, exit_code
                self.get_logger().error(f"FAULT: {reason}: stopping; exiting with status {exit_code}")
            now = time.monotonic()
            self.watchdog.tick(now, self.frame_origin, self.estop, self.command_origin, fault=True)
            self._stop_locked(now)
            self._publish_status_locked(now)

    # ---- safety: never waits for inference ------------------------------------------------------
    def on_estop(self, msg: Bool) -> None:
        if msg.data:
            with self.lock:
                if not self.estop:
                    self.get_logger().error("E-STOP received: stopping and latching until restart")
                self.estop = True
                now = time.monotonic()
                self.watchdog.tick(now, self.frame_origin, True, self.command_origin, self.fault is not None)
                self._stop_locked(now)

    def on_watchdog(self) -> None:
        self._inject("watchdog")
        now = time.monotonic()
        with self.lock:
            before = self.watchdog.state
            state = self.watchdog.tick(now, self.frame_origin, self.estop, self.command_origin,
                                       self.fault is not None)
            if state != State.RUNNING and (state != before or now - self.last_stop >= self.period):
                if state != before and state in (State.STALE, State.LATE):
                    origin = self.frame_origin if state == State.STALE else self.command_origin
                    self.watchdog_stop = {"reason": state.value, "frame_age_ms": round((now - origin) * 1e3, 1)}
                    self.get_logger().warning(
                        f"watchdog stop: {state.value} ({self.watchdog_stop['frame_age_ms']} ms since the frame)",
                        throttle_duration_sec=2.0)
                self._stop_locked(now)
            if now - self.last_status >= 0.2:  # status at <= 5 Hz
                self._publish_status_locked(now)
            # a frame nobody has acted on for a whole watchdog period while inference is idle: its wake-up
            # went missing (3-4 a run on the earlier guard-condition trigger; an Event set after the frame
            # is stored cannot lose one, so this is a net under a bug, not a path taken); wake inference
            # again rather than wait for the next frame. `rewakes` counts these.
            waited = now - max(self.frame_arrival, self.last_act + self.period)
            rewake = (self.policy is not None and self.acted_seq < self.frame_seq and not self.inference_busy
                      and bool(self.instruction) and not (self.estop or self.fault or self.closing)
                      and waited > 1.0 / float(self.p["watchdog_hz"]))
            if rewake:
                self.counts["rewakes"] += 1
        if rewake:
            self.frame_ready.set()

    def heartbeat(self) -> None:
        """Stop + status from the main thread, for when the executor (and the watchdog with it) is gone."""
        with self.lock:
            now = time.monotonic()
            self._stop_locked(now)
            self._publish_status_locked(now)

    def _publish_status_locked(self, now: float) -> None:
        self.last_status = now
        ticks = self.tick_times
        rate = (len(ticks) - 1) / (ticks[-1] - ticks[0]) if len(ticks) > 1 and ticks[-1] > ticks[0] else 0.0
        self.status_pub.publish(String(data=json.dumps({
            "state": self.watchdog.state.value, "fault": self.fault, "watchdog_stop": self.watchdog_stop,
            "latency_ms": round(self.latency_ms, 2), "wait_ms": round(self.wait_ms, 2),
            "frame_to_command_ms": round(self.frame_to_command_ms, 2), "rate_hz": round(rate, 2),
            "instruction": self.instruction, "actuating": bool(self.p["enable_actuation"]),
            "inference_busy": self.inference_busy, **self.counts})))

    # ---- inference thread -----------------------------------------------------------------------
    def _inference_loop(self) -> None:
        """
        Act on each wake-up until close().

        The frame is stored before the Event is set and read after it is cleared, so a frame arriving
        in between is acted on now, not lost. An exception outside the policy (whose own are faults
        in on_frame_ready) is a callback fault: stop, fault status, exit 4, never a silent thread.
        """
        while True:
            self.frame_ready.wait()
            self.frame_ready.clear()
            if self.closing:
                return
            try:
                self.on_frame_ready()
            except Exception as e:  # noqa: BLE001 - reported as a fault, never a silent dead thread
                self.inference_busy = False
                self.fail(f"inference thread raised {type(e).__name__}: {e}", EXIT_CALLBACK_FAULT)
                return

    def on_frame_ready(self) -> None:
        """Act on the newest frame, at most control_hz times a second; publish only if still fresh."""
        if self.policy is None or self.closing or self.fault:
            return
        self._inject("inference")  # a bug here, outside the policy call, is the inference thread's crash
        wait = self.last_act + self.period - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # rate limit; frames arriving meanwhile replace the one we will use
        with self.lock:
            if self.acted_seq == self.frame_seq or not self.instruction or self.estop or self.closing:
                return
            if time.monotonic() - self.frame_origin > self.max_age:  # already stale: not worth an inference
                self.acted_seq = self.frame_seq
                self.counts["skipped_stale"] += 1
                return
            frame, origin, instruction, joints = self.frame, self.frame_origin, self.instruction, self.joints
            stamp_ns, joints_stamp_ns = self.frame_stamp_ns, self.joints_stamp_ns
            self.acted_seq = self.frame_seq
            self.inference_busy = True
        t0 = time.monotonic()
        self.last_act = t0
        try:
            action = self.policy.act(frame[None, None], [instruction], None if joints is None else joints[None])[0]
            command = self.profile.to_command(action)
        except Exception as e:  # noqa: BLE001 - a failing policy must stop the robot, never go silent
            self.inference_busy = False
            self.fail(f"policy raised {type(e).__name__}: {e}")
            return
        t1 = time.monotonic()
        with self.lock:
            self.inference_busy = False
            if self.closing or self.estop or self.fault:
                return
            if t1 - origin > self.max_age:
                self.counts["discarded_stale"] += 1
                self.get_logger().warning(
                    f"inference result discarded: its frame is {t1 - origin:.2f}s old (max_image_age "
                    f"{self.max_age}s); inference took {t1 - t0:.2f}s", throttle_duration_sec=2.0)
                return
            try:
                safe = self.safety(command, t1)
            except ValueError as e:
                fault = f"policy output unusable: {e}"
            else:
                fault = None
                self.publish_command(safe)
                if self.source_pub is not None:
                    self.source_pub.publish(String(data=json.dumps(
                        {"frame_stamp_ns": stamp_ns, "state_stamp_ns": joints_stamp_ns if joints is not None
                         else None, "instruction": instruction, "command": [float(x) for x in safe]})))
                self.command_origin = origin
                self.latency_ms = (t1 - t0) * 1e3
                self.wait_ms = (t0 - origin) * 1e3
                self.frame_to_command_ms = (time.monotonic() - origin) * 1e3
                self.counts["actions"] += 1
                self.tick_times = (self.tick_times + [t0])[-20:]
        if fault:
            self.fail(fault)

    # ---- shutdown -----------------------------------------------------------------------------
    def close(self) -> None:
        """Leave the robot stopped: no inference result is published after this."""
        with self.lock:
            self.closing = True
            self._stop_locked(time.monotonic())
        self.frame_ready.set()  # lets the inference thread see `closing` and end


def main(args=None) -> None:
    stopping = runtime.init(args)
    try:
        node = PolicyNode()
    except Exception as e:  # noqa: BLE001 - e.g. a missing robot profile: say why and exit non-zero
        rclpy.logging.get_logger("qsft_policy").fatal(f"cannot start: {type(e).__name__}: {e}")
        rclpy.try_shutdown()
        sys.exit(EXIT_LOAD_FAILED)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = runtime.start_spinner(executor, lambda reason: node.fail(reason, EXIT_CALLBACK_FAULT),
                                    node.get_logger())
    while not stopping.is_set() and node.exit_code is None and spinner.is_alive():
        stopping.wait(0.1)  # the main thread only waits for a signal, a fault or a dead spinner
    if not spinner.is_alive() and node.exit_code is None and not stopping.is_set():
        node.fail("the executor stopped spinning", EXIT_CALLBACK_FAULT)
    if node.exit_code is not None and not stopping.is_set():
        end = time.monotonic() + float(node.p["fault_linger_s"])
        while not stopping.wait(min(node.period, 0.1)) and time.monotonic() < end:
            if not spinner.is_alive():  # the watchdog died with the executor: stop + fault status from here
                node.heartbeat()
    code = node.exit_code or 0
    node.close()
    # reliable QoS: wait (bounded) until every subscriber has acknowledged the final stop
    if not node.cmd_pub.wait_for_all_acked(Duration(seconds=1.0)):
        node.get_logger().warning("final stop not acknowledged by every subscriber within 1 s")
    runtime.finish(node, executor, spinner, code, busy=node.inference_busy)


if __name__ == "__main__":
    main()
