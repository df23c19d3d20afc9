"""The policy node's inference thread: act on the newest frame, at most control_hz times a second.

A plain thread woken by a threading.Event, not an executor callback, so that safety (watchdog, e-stop,
status), which runs on the executor, never waits for a forward pass. The frame is stored before the
Event is set and read after it is cleared, so a frame arriving in between is acted on now, not lost.
"""
from __future__ import annotations

import threading
import time

from qsft_robot.ros.control_loop import EXIT_CALLBACK_FAULT, ControlLoop


class InferenceWorker:
    def __init__(self, loop: ControlLoop, policy):
        self.loop, self.policy = loop, policy
        self.thread = threading.Thread(target=self._run, name="inference", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        """Act on each wake-up until the loop closes. An exception outside the policy call (the policy's own
        are faults in `step`) is a callback fault: stop, fault status, exit 4, never a silent dead thread."""
        loop = self.loop
        while True:
            loop.frame_ready.wait()
            loop.frame_ready.clear()
            if loop.closing:
                return
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - reported as a fault, never a silent dead thread
                loop.inference_busy = False
                loop.fail(f"inference thread raised {type(e).__name__}: {e}", EXIT_CALLBACK_FAULT)
                return

    def step(self) -> None:
        """One inference on the newest frame, if it is fresh; the result is published only if still fresh."""
        loop = self.loop
        if loop.closing or loop.fault:
            return
        wait = loop.last_act + loop.period - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # rate limit; frames arriving meanwhile replace the one we will use
        job = loop.take_job()
        if job is None:
            return
        t0 = time.monotonic()
        loop.last_act = t0
        try:
            states = None if job.states is None else job.states[None]
            action = self.policy.act(job.frame[None, None], [job.instruction], states)[0]
            command = loop.profile.to_command(action)
        except Exception as e:  # noqa: BLE001 - a failing policy must stop the robot, never go silent
            loop.finish_job(job, None, t0, time.monotonic())
            loop.fail(f"policy raised {type(e).__name__}: {e}")
            return
        loop.finish_job(job, command, t0, time.monotonic())
