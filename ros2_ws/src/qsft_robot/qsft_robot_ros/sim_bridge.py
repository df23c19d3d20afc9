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

Exit status: 0 when every episode ran (lockstep), 1 otherwise: no node came up within node_timeout,
more than max_resends frames in a row had to be sent again (the node does not answer), a callback
failed, or a signal ended the run early (every wait also watches for the signal).
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
from geometry_msgs.msg import Twist  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402

from qsft_robot.ros.image_conv import rgb_to_image_fields  # noqa: E402
from qsft_robot.ros.profiles import RobotProfile  # noqa: E402
from qsft_robot.sim.registry import make_task  # noqa: E402
from qsft_robot_ros import runtime  # noqa: E402
from qsft_robot_ros.policy_node import resolve_profile  # noqa: E402

DEFAULTS = {"task": "base_goto", "seed": 0, "episodes": 1, "lockstep": True, "rate_hz": 5.0, "image_size": 64,
            "robot_profile": "base", "image_topic": "/camera/image_raw", "command_topic": "/cmd_vel",
            "command_source_topic": "/qsft/command_source", "instruction_topic": "/qsft/instruction",
            "state_topic": "",
            "status_topic": "/sim/status", "max_steps": 0,
            "step_timeout": 5.0, "max_resends": 100, "node_timeout": 60.0, "exit_when_done": False}
EXIT_INCOMPLETE = 1


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
        if self.profile.message not in ("twist", "float64_multi_array") or self.profile.holds_position:
            raise ValueError(f"the sim applies base velocities (twist) or end-effector deltas "
                             f"(float64_multi_array), not {self.profile.action_space} as {self.profile.message}: "
                             "use config/sim/<base|arm>.yaml")
        self.episode = 0
        self.results: list[dict] = []
        self.obs, _ = self.env.reset(seed=int(p["seed"]))
        self.command = np.zeros(len(self.profile.scale))
        self.done = False
        self.success = False
        self.crashed: str | None = None  # a callback raised: the spinner stopped, so lockstep gives up
        self.cond = threading.Condition()
        self.commands: list[tuple[float, np.ndarray]] = []  # (arrival, normalised action)
        self.sources: dict[int, dict] = {}                    # frame stamp (ns) -> what the node reported
        # why frames were sent again, and how long answered frames took: the final status carries both, so a
        # slow lockstep run says which leg stalled (frame -> node, node -> report, command -> bridge)
        self.resend_reasons: Counter = Counter()
        self.answer_ms: list[float] = []
        self.img_pub = self.create_publisher(Image, p["image_topic"], 10)
        self.status_pub = self.create_publisher(String, p["status_topic"], 10)
        self.instr_pub = self.create_publisher(String, p["instruction_topic"], 10)
        self.state_pub = self.create_publisher(JointState, p["state_topic"], 10) if p["state_topic"] else None
        msg_type = Twist if self.profile.message == "twist" else Float64MultiArray
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
    def wait_for_node(self, stopping: threading.Event) -> bool:
        """
        Wait (at most node_timeout) until the node subscribes to the camera and publishes commands.

        Then a little more, so that its side of discovery completes too. False when stopped meanwhile.
        """
        end = time.monotonic() + float(self.p["node_timeout"])
        while time.monotonic() < end and not stopping.is_set() and self.crashed is None:
            if (self.count_subscribers(self.p["image_topic"]) and self.count_publishers(self.p["command_topic"])
                    and self.count_publishers(self.p["command_source_topic"])):
                return not stopping.wait(0.5)
            stopping.wait(0.05)
        return False

    def answer(self, stamp_ns: int, published: float, stopping: threading.Event) -> np.ndarray | str | None:
        """
        Return the command the node computed from the frame stamped stamp_ns, once it has arrived.

        "instruction" when the node acted on another instruction than this episode's (not received
        yet), "state" when on another proprio state than this frame's; None after step_timeout or once
        `stopping` is set (the wait wakes every 0.1 s to look).
        """
        end = published + float(self.p["step_timeout"])
        with self.cond:
            while not stopping.is_set() and self.crashed is None:
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

    def run_lockstep(self, stopping: threading.Event) -> bool:
        """Run the episodes; True when every one ran. The final /sim/status says how far it got and why."""
        episodes = int(self.p["episodes"])
        if not self.wait_for_node(stopping):
            self._report_not_started(stopping)
            return False
        self.instr_pub.publish(String(data=self.env.instruction))
        aborted, retries = self._run_episodes(episodes, stopping)
        self._report_lockstep(episodes, retries, aborted)
        return aborted is None

    def _report_not_started(self, stopping: threading.Event) -> None:
        """Say why no episode ran (signal, crashed callback or no node), in the log and the final status."""
        why = "stopped" if stopping.is_set() else (
            self.crashed or f"no policy node on the camera/command topics within {self.p['node_timeout']}s")
        self.get_logger().error(f"lockstep not started: {why}")
        self.publish_status(finished=True, successes=0, episodes=0, results=[], resends=0, aborted=why)

    def _run_episodes(self, episodes: int, stopping: threading.Event) -> tuple[str | None, int]:
        """
        Step until `episodes` episodes ran: one frame out, its command back, one step.

        Return (the reason the run was aborted or None, the number of frames sent again). A frame
        without a usable answer is sent again, but at most max_resends times in a row: a node that
        does not answer at all must not keep the run waiting forever.
        """
        retries, in_a_row, max_resends = 0, 0, int(self.p["max_resends"])
        while self.episode < episodes:
            if stopping.is_set() or self.crashed:
                return self.crashed or "stopped by a signal", retries
            if in_a_row > max_resends:
                return (f"more than max_resends={max_resends} frames in a row sent again (the node does not answer)",
                        retries)
            with self.cond:
                self.commands.clear()
                self.sources.clear()
            published = time.monotonic()
            stamp_ns = self.publish_frame()
            action = self.answer(stamp_ns, published, stopping)
            if stopping.is_set() or self.crashed:
                continue
            if isinstance(action, str) or action is None:
                retries += 1
                in_a_row += 1
                self._before_resend(action, stamp_ns, stopping)
                continue
            self.answer_ms.append((time.monotonic() - published) * 1e3)
            in_a_row = 0
            self._step(action, episodes)
        return None, retries

    def _before_resend(self, missed: str | None, stamp_ns: int, stopping: threading.Event) -> None:
        """
        Prepare to send the frame again, after answer() gave no command for it (`missed`).

        "instruction" or "state": the node acted on another instruction or state, so both go again
        (the instruction now, the state with the frame). None: a lost frame or a slow node, so the
        same observation goes again, freshly stamped; the warning says which half went missing.
        """
        if isinstance(missed, str):
            self.resend_reasons[missed] += 1
            if missed == "instruction":
                self.instr_pub.publish(String(data=self.env.instruction))
            stopping.wait(0.05)
            return
        with self.cond:  # say which half went missing: the node's report, or the command itself
            report = f"report {'seen' if stamp_ns in self.sources else 'missing'}"
            arrived = len(self.commands)
        self.resend_reasons[f"{report}, {'some' if arrived else 'no'} commands"] += 1
        self.get_logger().warning(f"no command within {self.p['step_timeout']}s ({report}, {arrived} commands "
                                  "arrived); frame sent again", throttle_duration_sec=2.0)

    def _step(self, action: np.ndarray, episodes: int) -> None:
        """Apply the node's command for one step; at an episode's end record it and reset for the next one."""
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

    def _report_lockstep(self, episodes: int, retries: int, aborted: str | None) -> None:
        """Log the successes (and why the run was aborted, if it was) and publish the final status."""
        n = sum(r["success"] for r in self.results)
        # with a state topic, every applied command was computed from this frame's state (answer() checks)
        state = f", proprio state on {self.p['state_topic']}" if self.state_pub is not None else ""
        self.get_logger().info(
            f"{self.p['task']}: success {n}/{len(self.results)} (lockstep, {retries} resends{state})")
        if aborted:
            self.get_logger().error(f"lockstep aborted after {len(self.results)}/{episodes} episodes: {aborted}")
        self.publish_status(finished=True, successes=n, episodes=len(self.results), results=self.results,
                            resends=retries, resend_reasons=dict(self.resend_reasons), answer_ms=self._answer_stats(),
                            **({"aborted": aborted} if aborted else {}))

    def _answer_stats(self) -> dict:
        """
        Summarise frame out -> command back over the answered frames, in ms.

        The percentiles are None when no frame was answered: the status stays plain JSON (no NaN).
        """
        if not self.answer_ms:
            return {"n": 0, "p50": None, "p90": None, "max": None}
        ms = np.asarray(self.answer_ms)
        return {"n": len(ms), "p50": round(float(np.median(ms)), 1), "p90": round(float(np.percentile(ms, 90)), 1),
                "max": round(float(ms.max()), 1)}


def main(args=None) -> None:
    stopping = runtime.init(args)
    node = SimBridge()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    # MuJoCo's EGL context belongs to the thread that first rendered (this one): every step and render
    # stays here; in lockstep a helper thread only delivers the messages
    spinner = None
    try:
        if node.p["lockstep"]:
            def crashed(reason: str) -> None:
                with node.cond:
                    node.crashed = reason
                    node.cond.notify_all()

            spinner = runtime.start_spinner(executor, crashed, node.get_logger())
            code = 0 if node.run_lockstep(stopping) else EXIT_INCOMPLETE
            if node.p["exit_when_done"] or node.crashed:
                stopping.wait(0.5)  # let the final status go out
                stopping.set()
            while not stopping.wait(0.2):  # short waits: the signal handlers run on this thread
                if not spinner.is_alive():
                    code = EXIT_INCOMPLETE
                    break
        else:
            while not stopping.is_set():
                executor.spin_once(timeout_sec=0.1)
    except Exception as e:  # noqa: BLE001 - a failed step or callback: say why, exit non-zero
        node.get_logger().error(f"sim bridge failed: {type(e).__name__}: {e}")
        code = EXIT_INCOMPLETE
    finally:
        runtime.finish(node, executor, spinner, code, cleanup=node.env.close)


if __name__ == "__main__":
    main()
