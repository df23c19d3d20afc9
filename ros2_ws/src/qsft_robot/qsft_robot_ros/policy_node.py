"""The Q-SFT policy node: latest camera frame in, safe action commands out, at control_hz.

Inference runs on its own thread so image callbacks are never blocked; every tick the watchdog
decides between acting and stopping (stale camera, e-stop), and everything published passes the
profile's safety filter. With enable_actuation false (the default) commands go to a preview topic.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from geometry_msgs.msg import Twist
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from qsft_robot.ros.image_conv import ImageFormatError, compressed_to_rgb, image_to_rgb
from qsft_robot.ros.profiles import RobotProfile
from qsft_robot.ros.safety import SafetyFilter, State, Watchdog

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

PARAMS = {
    "checkpoint": "", "policy": "checkpoint", "mode": "argmax_q", "device": "auto", "robot_profile": "base",
    "instruction": "", "image_topic": "/camera/image_raw", "compressed": False, "control_hz": 5.0,
    "max_image_age": 0.5, "enable_actuation": False, "command_topic": "/cmd_vel", "preview_topic": "/qsft/preview",
    "status_topic": "/qsft/status", "estop_topic": "/qsft/estop", "instruction_topic": "/qsft/instruction",
    "joint_state_topic": "",
}


def resolve_profile(name: str) -> Path:
    p = Path(name)
    return p if p.suffix in (".yaml", ".yml") else profiles_dir() / f"{name}.yaml"


def load_policy(kind: str, checkpoint: str, mode: str, device: str):
    if kind == "color_seek":
        from qsft_robot.ros.scripted_policy import ColorSeekPolicy
        return ColorSeekPolicy()
    if kind != "checkpoint":
        raise ValueError(f"unknown policy kind {kind!r} (checkpoint | color_seek)")
    import torch

    from qsft_robot.algo.policy import load_policy as load_ckpt
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_ckpt(checkpoint, mode=mode, device=device)


class PolicyNode(Node):
    def __init__(self):
        super().__init__("qsft_policy")
        for k, v in PARAMS.items():
            self.declare_parameter(k, v)
        p = {k: self.get_parameter(k).value for k in PARAMS}
        self.p = p
        self.profile = RobotProfile.load(resolve_profile(p["robot_profile"]))
        self.safety = SafetyFilter(self.profile.lower, self.profile.upper, self.profile.max_rate)
        self.watchdog = Watchdog(max_image_age=float(p["max_image_age"]))
        self.policy = load_policy(p["policy"], p["checkpoint"], p["mode"], p["device"])
        self.instruction = p["instruction"]
        self.lock = threading.Lock()
        self.frame: np.ndarray | None = None
        self.frame_time: float | None = None
        self.frame_used = True
        self.new_frame = threading.Event()
        self.state: np.ndarray | None = None
        self.estop = False
        self.counts = {"frames": 0, "dropped_frames": 0, "malformed": 0, "actions": 0, "stops": 0}
        self.latency_ms = 0.0         # the policy's inference for the last action
        self.wait_ms = 0.0            # frame received -> inference started (queueing, rate limit)
        self.frame_to_command_ms = 0.0  # frame received -> command published: what the robot feels
        self.tick_times: list[float] = []

        if p["compressed"]:
            self.create_subscription(CompressedImage, p["image_topic"], self.on_compressed, qos_profile_sensor_data)
        else:
            self.create_subscription(Image, p["image_topic"], self.on_image, qos_profile_sensor_data)
        self.create_subscription(Bool, p["estop_topic"], self.on_estop, 10)
        self.create_subscription(String, p["instruction_topic"], self.on_instruction, 10)
        if p["joint_state_topic"]:
            self.create_subscription(JointState, p["joint_state_topic"], self.on_joints, 10)
        msg_type = Twist if self.profile.kind == "base" else (
            JointTrajectory if self.profile.arm_message == "joint_trajectory" else Float64MultiArray)
        topic = p["command_topic"] if p["enable_actuation"] else p["preview_topic"]
        self.cmd_pub = self.create_publisher(msg_type, topic, 10)
        self.status_pub = self.create_publisher(String, p["status_topic"], 10)
        self.running = True
        self.worker = threading.Thread(target=self.control_loop, daemon=True)
        self.worker.start()
        self.get_logger().info(f"qsft policy node: profile {self.profile.name}, policy {p['policy']}, "
                               f"{'ACTUATING on ' + topic if p['enable_actuation'] else 'dry run on ' + topic}")

    # ---- inputs -------------------------------------------------------------------------------
    def _store(self, img: np.ndarray) -> None:
        with self.lock:
            if self.frame is not None and not self.frame_used:
                self.counts["dropped_frames"] += 1  # replaced before the policy used it (latest only)
            self.frame, self.frame_time, self.frame_used = img, time.perf_counter(), False
            self.counts["frames"] += 1
        self.new_frame.set()

    def on_image(self, msg: Image) -> None:
        try:
            self._store(image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data))
        except ImageFormatError as e:
            self.counts["malformed"] += 1
            self.get_logger().warning(f"malformed image skipped ({self.counts['malformed']} so far): {e}",
                                      throttle_duration_sec=2.0)

    def on_compressed(self, msg: CompressedImage) -> None:
        try:
            self._store(compressed_to_rgb(msg.format, msg.data))
        except ImageFormatError as e:
            self.counts["malformed"] += 1
            self.get_logger().warning(f"malformed compressed image skipped: {e}", throttle_duration_sec=2.0)

    def on_estop(self, msg: Bool) -> None:
        if msg.data and not self.estop:
            self.get_logger().error("E-STOP received: stopping and latching until restart")
            self.estop = True

    def on_instruction(self, msg: String) -> None:
        self.instruction = msg.data
        self.get_logger().info(f"instruction: {msg.data!r}")

    def on_joints(self, msg: JointState) -> None:
        self.state = np.asarray(msg.position, dtype=np.float32)

    # ---- control ------------------------------------------------------------------------------
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

    def stop(self) -> None:
        self.safety.reset()
        self.publish_command(self.profile.stop_command())
        self.counts["stops"] += 1

    def control_loop(self) -> None:
        """Act as soon as a new frame arrives, at most control_hz actions per second; otherwise tick
        at control_hz so the watchdog stops the robot when the camera goes quiet."""
        period = 1.0 / float(self.p["control_hz"])
        last_act, last_status = -1e9, -1e9
        next_tick = time.perf_counter()
        while self.running and rclpy.ok():
            now = time.perf_counter()
            pending = self.new_frame.is_set()
            # a pending frame is acted on as soon as the rate limit allows (never later than one period,
            # so e-stop and watchdog are still checked at control_hz); otherwise wait for a tick
            wake = last_act + period if pending else next_tick
            if now < wake:
                if pending:
                    time.sleep(wake - now)  # rate limit: the newest frame is used when allowed
                else:
                    self.new_frame.wait(timeout=wake - now)  # returns early when a frame arrives
                continue
            self.new_frame.clear()
            with self.lock:
                frame, frame_time, fresh = self.frame, self.frame_time, not self.frame_used
                self.frame_used = True
            state = self.watchdog.tick(now, frame_time, self.estop)
            if state == State.RUNNING and self.instruction:
                if now >= last_act + period:
                    t0 = time.perf_counter()
                    action = self.policy.act(frame[None, None], [self.instruction],
                                             None if self.state is None else self.state[None])[0]
                    t1 = time.perf_counter()
                    self.publish_command(self.safety(self.profile.to_command(action), t1))
                    self.latency_ms = (t1 - t0) * 1e3
                    if fresh:  # a frame's first action (later ticks re-act on it until it goes stale)
                        self.wait_ms = (t0 - frame_time) * 1e3
                        self.frame_to_command_ms = (time.perf_counter() - frame_time) * 1e3
                    self.counts["actions"] += 1
                    last_act = now
                    self.tick_times = (self.tick_times + [now])[-20:]
            else:
                self.stop()
            next_tick = now + period
            if now - last_status >= 0.2:  # status at <= 5 Hz: diagnostics must not cost control time
                self.publish_status(state)
                last_status = now

    def publish_status(self, state: State) -> None:
        ticks = self.tick_times
        rate = (len(ticks) - 1) / (ticks[-1] - ticks[0]) if len(ticks) > 1 and ticks[-1] > ticks[0] else 0.0
        self.status_pub.publish(String(data=json.dumps({
            "state": state.value, "latency_ms": round(self.latency_ms, 2), "wait_ms": round(self.wait_ms, 2),
            "frame_to_command_ms": round(self.frame_to_command_ms, 2), "rate_hz": round(rate, 2),
            "instruction": self.instruction, "actuating": bool(self.p["enable_actuation"]), **self.counts})))

    def shutdown(self) -> None:
        self.running = False
        self.new_frame.set()
        self.worker.join(timeout=2.0)
        self.stop()  # clean shutdown always leaves the robot stopped


def main(args=None) -> None:
    import signal

    from rclpy.signals import SignalHandlerOptions

    # Our own SIGINT/SIGTERM handling: rclpy's default handler shuts the context down before the
    # `finally` below runs, and a stop published on a dead context never reaches the robot.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    node = PolicyNode()
    try:
        while rclpy.ok() and not stopping.is_set():  # short spins so the signal flag is seen
            rclpy.spin_once(node, timeout_sec=0.1)
    except rclpy.executors.ExternalShutdownException:
        pass
    finally:
        node.shutdown()
        time.sleep(0.2)  # let DDS deliver the final stop
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
