"""TESTS ONLY: the policy node with a fault injected on purpose, run as `python -m ros_fault_node --ros-args ...`.

The product node has no fault switch; this subclass adds the parameter `inject_fault`: '<callback>:<n>'
makes that callback (image | watchdog | inference) raise on its n-th call, to check that a crash outside
the policy still stops the robot and exits non-zero; 'wakeup:<n>' drops the n-th frame's inference
wake-up, to check that the watchdog wakes inference again.
"""
from __future__ import annotations

from qsft_robot_ros.policy_node import PolicyNode, main

from qsft_robot.ros.control_loop import ControlLoop

FAULT_CALLBACKS = ("image", "watchdog", "wakeup", "inference")


def parse_fault(spec: str) -> tuple[str, int] | None:
    """'<callback>:<n>' -> (callback, n); '' -> None. Raises ValueError on anything else."""
    if not spec:
        return None
    name, _, n = spec.partition(":")
    if name not in FAULT_CALLBACKS or not n.isdigit() or int(n) < 1:
        raise ValueError(f"inject_fault must be '<{'|'.join(FAULT_CALLBACKS)}>:<n >= 1>' or '', not {spec!r}")
    return name, int(n)


class Injector:
    """Counts the calls of the one callback named in the spec and says when its n-th call comes."""

    def __init__(self, spec: str):
        self.fault, self.calls = parse_fault(spec), 0

    def hit(self, callback: str) -> bool:
        if self.fault is None or self.fault[0] != callback:
            return False
        self.calls += 1
        return self.calls == self.fault[1]

    def raise_at(self, callback: str) -> None:
        if self.hit(callback):
            raise RuntimeError(f"injected fault in the {callback} callback (call {self.calls})")


class FaultyLoop(ControlLoop):
    injector = Injector("")

    def wake(self) -> None:
        if not self.injector.hit("wakeup"):
            super().wake()

    def take_job(self):
        self.injector.raise_at("inference")  # the inference thread's own code, outside the policy call
        return super().take_job()


class FaultInjectionNode(PolicyNode):
    loop_class = FaultyLoop

    def _read_parameters(self) -> None:
        super()._read_parameters()
        self.injector = Injector(self.declare_parameter("inject_fault", "").value)

    def _create_inputs(self) -> None:
        self.loop.injector = self.injector
        if self.injector.fault:
            self.get_logger().warning(f"TEST FAULT INJECTION armed: {self.injector.fault}")
        super()._create_inputs()

    def on_image(self, msg) -> None:
        self.injector.raise_at("image")
        super().on_image(msg)

    def on_watchdog(self) -> None:
        self.injector.raise_at("watchdog")
        super().on_watchdog()


if __name__ == "__main__":
    main(node_class=FaultInjectionNode)
