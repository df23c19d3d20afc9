"""What the policy node decides, without rclpy: inputs stored, commands made safe, stops, faults, status.

The node's ROS callbacks (one executor thread) and the inference worker (its own thread) share the
state here, guarded by `lock`, which is taken for short and never during inference. The node turns ROS
messages into plain values before they come here, and `Outputs` turns what goes out back into messages,
so every safety rule below is exercised by unit tests without ROS and by the node tests over real rclpy.

A stop is immediate and never slew-limited. For velocities and end-effector deltas it is zero; for
absolute joint targets it holds the measured pose, latched when the stop begins (a pose is only ever
measured, never assumed: without a JointState nothing is sent to the arm).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from qsft_robot.ros.commands import CommandBuilder, Message
from qsft_robot.ros.params import late_bound
from qsft_robot.ros.profiles import RobotProfile
from qsft_robot.ros.safety import SafetyFilter, State, Watchdog
from qsft_robot.ros.status import command_rate, state_reason

EXIT_LOAD_FAILED = 2
EXIT_POLICY_FAULT = 3
EXIT_CALLBACK_FAULT = 4  # a callback other than the policy call raised; the executor stopped


class Outputs(Protocol):
    """Where the loop's results go (the node: publishers and its logger; tests: a recorder)."""

    def send(self, messages: list[Message]) -> None: ...
    def status(self, data: dict) -> None: ...
    def source(self, data: dict) -> None: ...
    def log(self, level: str, text: str, throttle_s: float = 0.0) -> None: ...


@dataclass
class Job:
    """One frame taken for inference, with what the command built from it must report."""
    frame: np.ndarray
    origin: float
    stamp_ns: int
    instruction: str
    states: np.ndarray | None
    state_stamp_ns: int | None


class ControlLoop:
    def __init__(self, profile: RobotProfile, params: dict, outputs: Outputs):
        self.profile, self.p, self.out = profile, params, outputs
        self.period = 1.0 / float(params["control_hz"])
        self.max_age = float(params["max_image_age"])
        self.builder = CommandBuilder(profile, float(params["control_hz"]))
        self.safety = SafetyFilter(profile.lower, profile.upper, profile.max_rate, max_dt=self.period,
                                   zero_is_rest=not profile.holds_position)
        self.watchdog = Watchdog(max_image_age=self.max_age, late_age=late_bound(self.max_age, params["control_hz"]),
                                 needs_joint_state=profile.holds_position)
        self.policy = None
        self.lock = threading.Lock()
        self.frame_ready = threading.Event()
        self._init_state()

    def _init_state(self) -> None:
        self.frame: np.ndarray | None = None
        self.frame_origin: float | None = None  # monotonic time the newest frame counts as taken
        self.frame_stamp_ns = 0                 # its header.stamp (0: unset)
        self.frame_arrival = 0.0
        self.frame_seq = self.acted_seq = 0
        self.command_origin: float | None = None  # origin of the frame behind the last published command
        self.joints: np.ndarray | None = None     # the policy's proprio state
        self.joints_stamp_ns = 0
        self.measured: np.ndarray | None = None   # joint targets: the measured pose, command units
        self.measured_origin: float | None = None
        self.joint_state_error: str | None = None
        self.hold: np.ndarray | None = None       # joint targets: the pose the current stop holds
        self.estop = self.closing = self.inference_busy = False
        self.fault: str | None = None
        self.exit_code: int | None = None
        self.last_act = self.last_stop = self.last_status = -1e9
        self.watchdog_stop: dict | None = None  # why and how late the last watchdog stop went out
        # skipped_stale: frames already older than max_image_age when inference could start (never run);
        # discarded_stale: results whose frame went stale during inference (never published);
        # rewakes: frames the inference wake-up missed, acted on after the watchdog woke it again
        self.counts = {"frames": 0, "dropped_frames": 0, "malformed": 0, "actions": 0, "stops": 0,
                       "skipped_stale": 0, "discarded_stale": 0, "truncated_instructions": 0, "rewakes": 0}
        self.latency_ms = self.wait_ms = self.frame_to_command_ms = 0.0
        self.tick_times: list[float] = []
        self.instruction = ""

    # ---- inputs (executor thread) -------------------------------------------------------------
    def store_frame(self, img: np.ndarray, origin: float, stamp_ns: int, arrival: float) -> None:
        with self.lock:
            if self.frame is not None and self.acted_seq < self.frame_seq:
                self.counts["dropped_frames"] += 1  # replaced before the policy used it (latest only)
            self.frame, self.frame_origin, self.frame_stamp_ns = img, origin, stamp_ns
            self.frame_arrival = arrival
            self.frame_seq += 1
            self.counts["frames"] += 1
        self.wake()

    def wake(self) -> None:
        """Wake the inference worker for the newest frame."""
        self.frame_ready.set()

    def store_joints(self, names: list[str], positions: list[float], origin: float, stamp_ns: int) -> str | None:
        """Keep the newest JointState; returns why it cannot be used (joint targets only), else None."""
        if not self.profile.holds_position:
            with self.lock:
                self.joints, self.joints_stamp_ns = np.asarray(positions, dtype=np.float32), stamp_ns
            return None
        from qsft_robot.ros.joints import positions_by_name

        measured, error = positions_by_name(self.profile.joint_names, list(names), list(positions))
        with self.lock:
            self.joint_state_error = error
            if measured is not None:
                self.measured, self.measured_origin, self.joints_stamp_ns = measured, origin, stamp_ns
                self.joints = self.profile.to_action(measured)  # float64: the policy holds these exactly
        return error

    def set_instruction(self, text: str) -> None:
        with self.lock:
            self.instruction = text

    def count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    # ---- stops, faults, safety (never wait for inference) -----------------------------------------
    def _stop_locked(self, now: float) -> None:
        """Stop at once (never slew-limited); the next command ramps up from rest (zero, or the pose measured
        then). A position stop keeps holding the pose measured when it began: re-sending each new measurement
        instead would let an arm that sags under load creep down, one stop after another."""
        if self.profile.holds_position and self.hold is None and self.measured is not None:
            self.hold = self.measured.copy()
        self.safety.reset(now)
        messages = self.builder.stop(self.hold)
        if messages:
            self.out.send(messages)
            self.counts["stops"] += 1
        self.last_stop = now

    def _tick_locked(self, now: float, fault: bool = False) -> State:
        return self.watchdog.tick(now, self.frame_origin, self.estop, self.command_origin,
                                  fault or self.fault is not None, self.measured_origin)

    def fail(self, reason: str, exit_code: int = EXIT_POLICY_FAULT) -> None:
        """Latch a fault: stop now, report it, and let the node exit non-zero after fault_linger_s."""
        with self.lock:
            if self.fault is None:
                self.fault, self.exit_code = reason, exit_code
                self.out.log("error", f"FAULT: {reason}: stopping; exiting with status {exit_code}")
            now = time.monotonic()
            self._tick_locked(now, fault=True)
            self._stop_locked(now)
            self._publish_status_locked(now)

    def press_estop(self) -> None:
        with self.lock:
            if not self.estop:
                self.out.log("error", "E-STOP received: stopping and latching until restart")
            self.estop = True
            now = time.monotonic()
            self._tick_locked(now)
            self._stop_locked(now)

    def on_watchdog(self) -> None:
        """Every 1/watchdog_hz: stop unless running, status at <= 5 Hz, and wake inference for a lost wake-up."""
        now = time.monotonic()
        with self.lock:
            before = self.watchdog.state
            state = self._tick_locked(now)
            if state != State.RUNNING and (state != before or now - self.last_stop >= self.period):
                if state != before and state in (State.STALE, State.LATE):
                    origin = self.frame_origin if state == State.STALE else self.command_origin
                    self.watchdog_stop = {"reason": state.value, "frame_age_ms": round((now - origin) * 1e3, 1)}
                    self.out.log("warning", f"watchdog stop: {state.value} ({self.watchdog_stop['frame_age_ms']} ms "
                                 "since the frame)", throttle_s=2.0)
                self._stop_locked(now)
            if now - self.last_status >= 0.2:
                self._publish_status_locked(now)
            rewake = self._lost_wakeup_locked(now)
        if rewake:
            self.wake()

    def _lost_wakeup_locked(self, now: float) -> bool:
        """A frame nobody has acted on for a whole watchdog period while inference is idle: its wake-up went
        missing (an Event set after the frame is stored cannot lose one, so this is a net under a bug, not a
        path taken); wake inference again rather than wait for the next frame. `rewakes` counts these."""
        waited = now - max(self.frame_arrival, self.last_act + self.period)
        rewake = (self.policy is not None and self.acted_seq < self.frame_seq and not self.inference_busy
                  and bool(self.instruction) and not (self.estop or self.fault or self.closing)
                  and waited > 1.0 / float(self.p["watchdog_hz"]))
        if rewake:
            self.counts["rewakes"] += 1
        return rewake

    def heartbeat(self) -> None:
        """Stop + status from the main thread, for when the executor (and the watchdog with it) is gone."""
        with self.lock:
            now = time.monotonic()
            self._stop_locked(now)
            self._publish_status_locked(now)

    def close(self) -> None:
        """Leave the robot stopped: no inference result is published after this."""
        with self.lock:
            self.closing = True
            self._stop_locked(time.monotonic())
        self.wake()  # lets the inference worker see `closing` and end

    def _publish_status_locked(self, now: float) -> None:
        self.last_status = now
        state = self.watchdog.state
        self.out.status({
            "state": state.value, "reason": state_reason(state, self.fault, self.joint_state_error),
            "fault": self.fault, "watchdog_stop": self.watchdog_stop, "action_space": self.profile.action_space,
            "latency_ms": round(self.latency_ms, 2), "wait_ms": round(self.wait_ms, 2),
            "frame_to_command_ms": round(self.frame_to_command_ms, 2),
            "rate_hz": round(command_rate(self.tick_times), 2),
            "instruction": self.instruction, "actuating": bool(self.p["enable_actuation"]),
            "inference_busy": self.inference_busy, **self.counts})

    # ---- inference (worker thread) ----------------------------------------------------------------
    def may_act_locked(self, now: float) -> bool:
        """Joint targets need a fresh measured pose: the policy acts on it and the slew limit starts there."""
        if not self.profile.holds_position:
            return True
        return self.measured_origin is not None and now - self.measured_origin <= self.max_age

    def take_job(self) -> Job | None:
        """The newest frame for inference, or None when there is nothing (fresh) to act on."""
        with self.lock:
            if self.acted_seq == self.frame_seq or not self.instruction or self.estop or self.closing or self.fault:
                return None
            now = time.monotonic()
            if now - self.frame_origin > self.max_age or not self.may_act_locked(now):
                self.acted_seq = self.frame_seq  # already stale: not worth an inference
                self.counts["skipped_stale"] += 1
                return None
            self.acted_seq = self.frame_seq
            self.inference_busy = True
            return Job(self.frame, self.frame_origin, self.frame_stamp_ns, self.instruction, self.joints,
                       self.joints_stamp_ns if self.joints is not None else None)

    def finish_job(self, job: Job, command: np.ndarray | None, t0: float, t1: float) -> None:
        """Publish the command made from `job` (command units) if its frame is still fresh; None: no result."""
        with self.lock:
            self.inference_busy = False
            if command is None or self.closing or self.estop or self.fault:
                return
            if t1 - job.origin > self.max_age or not self.may_act_locked(t1):
                self.counts["discarded_stale"] += 1
                self.out.log("warning", f"inference result discarded: its frame is {t1 - job.origin:.2f}s old "
                             f"(max_image_age {self.max_age}s) or the joint state went stale; inference took "
                             f"{t1 - t0:.2f}s", throttle_s=2.0)
                return
            try:
                safe = self.safety(command, t1, rest=self.measured)
            except ValueError as e:
                fault = f"policy output unusable: {e}"
            else:
                fault = None
                self._published_locked(job, safe, t0, t1)
        if fault:
            self.fail(fault)

    def _published_locked(self, job: Job, safe: np.ndarray, t0: float, t1: float) -> None:
        self.out.send(self.builder.command(safe))
        self.hold = None  # moving again: the next stop holds the pose measured then
        self.out.source({"frame_stamp_ns": job.stamp_ns, "state_stamp_ns": job.state_stamp_ns,
                         "instruction": job.instruction, "command": [float(x) for x in safe]})
        self.command_origin = job.origin
        self.latency_ms = (t1 - t0) * 1e3
        self.wait_ms = (t0 - job.origin) * 1e3
        self.frame_to_command_ms = (time.monotonic() - job.origin) * 1e3
        self.counts["actions"] += 1
        self.tick_times = (self.tick_times + [t0])[-20:]
