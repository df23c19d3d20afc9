"""
MuJoCo task as a ROS 2 robot.

It publishes its camera as sensor_msgs/Image and applies the commands it receives, so the whole loop
(camera -> policy node -> command -> physics) runs over real ROS 2.

In lockstep mode (the default) the simulation advances one step per command the node computed from
the frame just published: the step waits for the command whatever the wall-clock time, so a run over
ROS takes the same steps as `qsft-robot eval` in process. The node names the frame behind each command
on its command_source topic; a command is applied once its values match that report for the current
frame (a stop heartbeat in flight cannot be mistaken for the answer). With lockstep false the bridge
steps on its own timer at rate_hz, as a real robot would.
"""
from __future__ import annotations

import json
import os
import threading
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from geometry_msgs.msg import Twist  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402

from qsft_robot.ros.image_conv import rgb_to_image_fields  # noqa: E402
from qsft_robot.ros.profiles import RobotProfile  # noqa: E402
from qsft_robot.sim.registry import make_task  # noqa: E402
from qsft_robot_ros.policy_node import resolve_profile  # noqa: E402

DEFAULTS = {"task": "base_goto", "seed": 0, "episodes": 1, "lockstep": True, "rate_hz": 5.0, "image_size": 64,
            "robot_profile": "base", "image_topic": "/camera/image_raw", "command_topic": "/cmd_vel",
            "command_source_topic": "/qsft/command_source", "instruction_topic": "/qsft/instruction",
            "state_topic": "",
            "status_topic": "/sim/status", "max_steps": 0,
            "step_timeout": 5.0, "exit_when_done": False}


class SimBridge(Node):
    def __init__(self):
        super().__init__("qsft_sim_bridge")
        for k, v in DEFAULTS.items():
            self.declare_parameter(k, v)
        p = {k: self.get_parameter(k).value for k in DEFAULTS}
        self.p = p
        kw = {"image_size": int(p["image_size"]), **({"max_steps": int(p["max_steps"])} if p["max_steps"] else {})}
        self.env = make_task(p["task"], **kw)
        self.profile = RobotProfile.load(resolve_profile(p["robot_profile"]))
        self.episode = 0
        self.results: list[dict] = []
        self.obs, _ = self.env.reset(seed=int(p["seed"]))
        self.command = np.zeros(len(self.profile.scale))
        self.done = False
        self.success = False
        self.cond = threading.Condition()
        self.commands: list[tuple[float, np.ndarray]] = []  # (arrival, normalised action)
        self.sources: dict[int, dict] = {}                    # frame stamp (ns) -> what the node reported
        self.img_pub = self.create_publisher(Image, p["image_topic"], 10)
        self.status_pub = self.create_publisher(String, p["status_topic"], 10)
        self.instr_pub = self.create_publisher(String, p["instruction_topic"], 10)
        self.state_pub = self.create_publisher(JointState, p["state_topic"], 10) if p["state_topic"] else None
        msg_type = Twist if self.profile.kind == "base" else Float64MultiArray
        self.create_subscription(msg_type, p["command_topic"], self.on_command, 50)
        self.create_subscription(String, p["command_source_topic"], self.on_source, 50)
        if not p["lockstep"]:
            self.create_timer(1.0 / float(p["rate_hz"]), self.tick)
        self.get_logger().info(f"sim bridge: {p['task']} seed {p['seed']} x{p['episodes']} "
                               f"({'lockstep' if p['lockstep'] else str(p['rate_hz']) + ' Hz'}): "
                               f"{self.env.instruction!r}")

    # ---- inputs -------------------------------------------------------------------------------
    def on_command(self, msg) -> None:
        cmd = [msg.linear.x, msg.angular.z] if isinstance(msg, Twist) else list(msg.data)
        action = np.asarray(cmd) / np.asarray(self.profile.scale)  # back to the normalised action
        with self.cond:
            self.command = action
            self.commands.append((time.monotonic(), np.asarray(cmd, dtype=np.float64)))
            self.cond.notify_all()

    def on_source(self, msg: String) -> None:
        src = json.loads(msg.data)
        with self.cond:
            self.sources[int(src["frame_stamp_ns"])] = src
            self.cond.notify_all()

    # ---- outputs ------------------------------------------------------------------------------
    def publish_frame(self) -> int:
        f = rgb_to_image_fields(self.obs["images"][self.env.camera])
        msg = Image(encoding=f["encoding"], height=f["height"], width=f["width"], step=f["step"], data=f["data"])
        now = self.get_clock().now()
        msg.header.stamp = now.to_msg()
        msg.header.frame_id = self.env.camera
        if self.state_pub is not None:  # proprio state first, with the frame's stamp
            state = JointState(position=[float(x) for x in self.obs["state"]])
            state.header.stamp = msg.header.stamp
            self.state_pub.publish(state)
        self.img_pub.publish(msg)
        return now.nanoseconds

    def publish_status(self, **extra) -> None:
        self.status_pub.publish(String(data=json.dumps({
            "episode": self.episode, "seed": int(self.p["seed"]) + self.episode, "t": self.env.t,
            "success": self.success, "done": self.done, "instruction": self.env.instruction, **extra})))

    # ---- free-running -------------------------------------------------------------------------
    def tick(self) -> None:
        if not self.done:
            self.obs, _, term, trunc, info = self.env.step(self.command)
            self.success = bool(info["success"])
            self.done = term or trunc
        self.publish_frame()
        self.publish_status()

    # ---- lockstep -----------------------------------------------------------------------------
    def wait_for_node(self, timeout: float = 60.0) -> bool:
        """
        Wait until the node subscribes to the camera and publishes commands.

        Then a little more, so that its side of discovery completes too.
        """
        end = time.monotonic() + timeout
        while time.monotonic() < end and rclpy.ok():
            if (self.count_subscribers(self.p["image_topic"]) and self.count_publishers(self.p["command_topic"])
                    and self.count_publishers(self.p["command_source_topic"])):
                time.sleep(0.5)
                return True
            time.sleep(0.05)
        return False

    def answer(self, stamp_ns: int, published: float) -> np.ndarray | str | None:
        """
        Return the command the node computed from the frame stamped stamp_ns, once it has arrived.

        "instruction" when the node acted on another instruction than this episode's (not received
        yet), "state" when on another proprio state than this frame's; None after step_timeout.
        """
        end = published + float(self.p["step_timeout"])
        with self.cond:
            while rclpy.ok():
                src = self.sources.get(stamp_ns)
                if src is not None and src.get("instruction") != self.env.instruction:
                    return "instruction"
                if src is not None and self.state_pub is not None and src.get("state_stamp_ns") != stamp_ns:
                    return "state"
                if src is not None:
                    for t, cmd in self.commands:
                        if t >= published and np.allclose(cmd, src["command"], atol=1e-9):
                            return cmd / np.asarray(self.profile.scale)
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(timeout=min(left, 0.1))
        return None

    def run_lockstep(self, stopping: threading.Event) -> None:
        if not self.wait_for_node():
            self.get_logger().error("no policy node on the camera/command topics")
            return
        episodes, retries = int(self.p["episodes"]), 0
        self.instr_pub.publish(String(data=self.env.instruction))
        while self.episode < episodes and not stopping.is_set():
            with self.cond:
                self.commands.clear()
                self.sources.clear()
            published = time.monotonic()
            action = self.answer(self.publish_frame(), published)
            if isinstance(action, str):  # the node acted on another instruction or state: send both again
                if action == "instruction":
                    self.instr_pub.publish(String(data=self.env.instruction))
                retries += 1
                time.sleep(0.05)
                continue
            if action is None:  # lost frame or a slow node: the same observation again, freshly stamped
                retries += 1
                self.get_logger().warning(f"no command within {self.p['step_timeout']}s; frame sent again",
                                          throttle_duration_sec=2.0)
                continue
            self.obs, _, term, trunc, info = self.env.step(action)
            self.success = bool(info["success"])
            self.done = term or trunc
            self.publish_status()
            if self.done:
                self.results.append({"seed": int(self.p["seed"]) + self.episode, "success": self.success,
                                     "length": self.env.t, "final_state": [float(x) for x in self.obs["state"]]})
                self.get_logger().info(f"episode {self.episode} seed {self.results[-1]['seed']}: "
                                       f"success={self.success} in {self.env.t} steps")
                self.episode += 1
                if self.episode < episodes:
                    self.obs, _ = self.env.reset(seed=int(self.p["seed"]) + self.episode)
                    self.done = self.success = False
                    self.instr_pub.publish(String(data=self.env.instruction))
        n = sum(r["success"] for r in self.results)
        self.get_logger().info(f"{self.p['task']}: success {n}/{len(self.results)} (lockstep, {retries} resends)")
        self.publish_status(finished=True, successes=n, episodes=len(self.results), results=self.results,
                            resends=retries)


def main(args=None) -> None:
    import signal

    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    node = SimBridge()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    # MuJoCo's EGL context belongs to the thread that first rendered (this one): every step and render
    # stays here; in lockstep a helper thread only delivers the messages
    spinner = threading.Thread(target=executor.spin, daemon=True) if node.p["lockstep"] else None
    try:
        if spinner is not None:
            spinner.start()
            node.run_lockstep(stopping)
            if node.p["exit_when_done"]:
                time.sleep(0.5)  # let the final status go out
                stopping.set()
            while not stopping.wait(0.2):  # short waits: the signal handlers run on this thread
                pass
        else:
            while not stopping.is_set():
                executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown(timeout_sec=2.0)
        if spinner is not None:
            spinner.join(timeout=2.0)  # destroying the node under a spinning thread aborts the process
        node.env.close()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
