"""
What the policy node and the sim bridge share around their nodes: signals, the spinner thread, exit.

* rclpy's own SIGINT/SIGTERM handler shuts the context down before a node can publish its final stop
  (a stop published on a dead context never reaches the robot), so signals only set an Event here.
* rclpy re-raises a callback's exception out of executor.spin: on a helper thread that would end all
  spinning (watchdog and e-stop included) while the process stays up, alive and silent. The spinner
  reports such a crash to `on_crash` instead, and the main loop also sees a spinner that died.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable

import rclpy
from rclpy.signals import SignalHandlerOptions


def init(args=None) -> threading.Event:
    """rclpy.init without its signal handlers; SIGINT/SIGTERM set the returned Event."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    return stopping


def start_spinner(executor, on_crash: Callable[[str], None], logger) -> threading.Thread:
    """Spin `executor` on a daemon thread; an exception out of any callback calls on_crash(reason)."""
    def spin() -> None:
        try:
            executor.spin()
        except Exception as e:  # noqa: BLE001 - reported, never a silent dead thread
            reason = f"callback raised {type(e).__name__}: {e}"
            logger.error(f"executor stopped: {reason}\n{traceback.format_exc()}")
            on_crash(reason)

    thread = threading.Thread(target=spin, name="spinner", daemon=True)
    thread.start()
    return thread


def flush_logs() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()


def finish(node, executor, spinner: threading.Thread | None, code: int, busy: bool = False,
           cleanup: Callable[[], None] | None = None) -> None:
    """
    Shut down and exit with `code`.

    busy: a callback is inside a call that cannot be interrupted (a long forward pass); tearing rclpy
    down under it aborts the process, so leave at once (what had to be published is out).
    """
    if busy:
        node.get_logger().warning("exiting while a callback is still running (its result is discarded)")
        flush_logs()
        os._exit(code)
    executor.shutdown(timeout_sec=2.0)
    if spinner is not None:
        spinner.join(timeout=2.0)  # destroying the node under a spinning thread aborts the process
        if spinner.is_alive():
            flush_logs()
            os._exit(code)
    if cleanup is not None:
        cleanup()
    node.destroy_node()
    rclpy.try_shutdown()
    sys.exit(code)
