"""Image publish -> action receive latency through the ROS 2 node, against bare inference, one run.

The node runs the default model from a fresh checkpoint on 224x224 rgb8 frames (the processor
resizes). Each frame is published alone after the previous one went stale, so the first non-stop
command after it was computed from it; overhead = median(latency) - median(bare inference). Bare
inference is timed twice: back to back (warm caches and thread pool) and after the same 0.3 s idle
gap the ROS frames have, which is the like-for-like baseline (a first inference after idling pays
for waking torch's threads and cold caches; measured ~3-4 ms on 2 cores, not ROS's cost). The node's
own stage times (frame received -> inference starts -> command published) come from its status.

    python bench/ros_latency.py [--frames 40]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, episodes, machine, table  # noqa: E402

if TYPE_CHECKING:  # numpy, torch and rclpy are imported in the functions, once main() has set ROS's env
    import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ros2_ws" / "src" / "qsft_robot"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=40)
    a = ap.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    ckpt, f = checkpoint_and_frame()
    bare, bare_idle = bare_inference(ckpt, f, a.frames)
    lat, inside, stages = ros_latency(ckpt, f, a.frames)
    report(bare, bare_idle, lat, inside, stages)


def checkpoint_and_frame() -> tuple[Path, dict]:
    """A fresh 1-step checkpoint of the default model and one random 224x224 rgb8 frame as Image fields.

    The weights do not matter for latency, only the model's shape and the frame size do.
    """
    import numpy as np

    from qsft_robot.config import load_config
    from qsft_robot.ros.image_conv import rgb_to_image_fields
    from qsft_robot.train.trainer import train

    eps = episodes("base_goto", 8)
    ckpt = train(load_config(None, [f"train.out_dir={OUT / 'ros_latency_run'}", "train.steps=1",
                                    "train.batch_size=4"]), eps)
    img = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    return ckpt, rgb_to_image_fields(img)


def bare_inference(ckpt: Path, f: dict, frames: int) -> tuple[list[float], list[float]]:
    """Seconds per convert + act in process: `frames` back to back, then `frames` after a 0.3 s idle gap each.

    The idle-gap run is the like-for-like baseline: the ROS protocol leaves the same gap between frames.
    """
    from qsft_robot.algo.policy import load_policy
    from qsft_robot.ros.image_conv import image_to_rgb

    pol = load_policy(ckpt)
    bare, bare_idle = [], []
    for i in range(2 * frames):
        if i >= frames:  # the ROS protocol below leaves 0.3 s between frames: the same idle gap here
            time.sleep(0.3)
        t = time.perf_counter()
        frame = image_to_rgb(f["encoding"], f["height"], f["width"], f["step"], f["data"])
        pol.act(frame[None, None], ["drive to the red cone"])
        (bare if i < frames else bare_idle).append(time.perf_counter() - t)
    return bare, bare_idle


def ros_latency(ckpt: Path, f: dict, frames: int) -> tuple[list[float], list[float], np.ndarray]:
    """Start the policy node on `ckpt` (dry run, CPU) and a probe node; measure what measure_frames() says.

    The node always ends with the measurement (terminated, also when it failed), so no run leaves one behind.
    """
    import rclpy
    from geometry_msgs.msg import Twist
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PKG), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    node = subprocess.Popen([sys.executable, "-m", "qsft_robot_ros.policy_node", "--ros-args", "--params-file",
                             str(PKG / "config" / "base.yaml"), "-p", f"checkpoint:={ckpt}", "-p", "device:=cpu",
                             "-p", "control_hz:=30.0", "-p", "max_image_age:=0.15"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rclpy.init()
    n = rclpy.create_node("latency_probe")
    got: list[tuple[float, Twist]] = []
    up, moved = threading.Event(), threading.Event()

    def on_cmd(m):
        got.append((time.perf_counter(), m))
        if m.linear.x != 0.0 or m.angular.z != 0.0:
            moved.set()
    n.create_subscription(Twist, "/qsft/preview", on_cmd, 100)
    node_inf: list[dict] = []

    def on_status(m):
        up.set()
        node_inf.append(json.loads(m.data))
    n.create_subscription(String, "/qsft/status", on_status, 10)
    pub = n.create_publisher(Image, "/camera/image_raw", 10)
    ex = rclpy.executors.SingleThreadedExecutor()
    ex.add_node(n)
    threading.Thread(target=ex.spin, daemon=True).start()
    try:
        if not up.wait(60):
            raise RuntimeError("policy node did not start")
        msg = Image(encoding=f["encoding"], height=f["height"], width=f["width"], step=f["step"], data=f["data"])
        return measure_frames(pub, msg, got, moved, node_inf, frames)
    finally:
        node.terminate()
        node.wait(10)
        ex.shutdown()
        rclpy.try_shutdown()


def measure_frames(pub, msg, got: list, moved: threading.Event, node_inf: list[dict],
                   frames: int) -> tuple[list[float], list[float], np.ndarray]:
    """Publish `frames` + 3 frames one at a time and time each one to its first non-stop command.

    Each frame goes out only after the previous one went stale (0.3 s), so the first non-stop command
    after it was computed from it. Returns (publish -> command s, the node's inference s, its
    [wait_ms, frame_to_command_ms] per frame), the first 3 of each dropped as warm-up.
    """
    import numpy as np

    lat, inside, stages = [], [], []
    for _ in range(frames + 3):
        time.sleep(0.3)  # previous frame is stale now: the node publishes stops (zero twists)
        if lat and node_inf:  # the node's own account of that frame (its status, published at 5 Hz)
            inside.append(node_inf[-1]["latency_ms"] / 1e3)
            stages.append([node_inf[-1][k] for k in ("wait_ms", "frame_to_command_ms")])
        got.clear()
        moved.clear()
        t0 = time.perf_counter()
        pub.publish(msg)
        if moved.wait(2.0):
            lat.append(next(t for t, m in list(got) if m.linear.x != 0.0 or m.angular.z != 0.0) - t0)
    return lat[3:], inside[3:], np.array(stages[3:])


def report(bare: list[float], bare_idle: list[float], lat: list[float], inside: list[float],
           stages: np.ndarray) -> None:
    """Print the table (medians and p90s in ms) and one JSON line with the medians and the overheads."""
    import numpy as np

    med_b, med_bi, med_l, med_i = (1e3 * float(np.median(x)) for x in (bare, bare_idle, lat, inside))
    table(f"ROS 2 latency, 224x224 rgb8 -> Twist, default model on CPU — {machine()}",
          ["path", "median ms", "p90 ms", "n"],
          [["bare inference (convert + act), back to back", f"{med_b:.1f}", f"{1e3 * np.quantile(bare, 0.9):.1f}",
            len(bare)],
           ["bare inference after a 0.3 s idle gap (as the ROS frames)", f"{med_bi:.1f}",
            f"{1e3 * np.quantile(bare_idle, 0.9):.1f}", len(bare_idle)],
           ["inference inside the node (its status)", f"{med_i:.1f}", f"{1e3 * np.quantile(inside, 0.9):.1f}",
            len(inside)],
           ["  node: frame received -> inference starts", f"{np.median(stages[:, 0]):.2f}",
            f"{np.quantile(stages[:, 0], 0.9):.2f}", len(stages)],
           ["  node: frame received -> command published", f"{np.median(stages[:, 1]):.1f}",
            f"{np.quantile(stages[:, 1], 0.9):.1f}", len(stages)],
           ["publish -> node -> command received", f"{med_l:.1f}", f"{1e3 * np.quantile(lat, 0.9):.1f}", len(lat)],
           ["overhead vs bare inference, back to back", f"{med_l - med_b:.1f}", "", ""],
           ["overhead vs bare inference, same idle gap", f"{med_l - med_bi:.1f}", "", ""],
           ["overhead vs the node's own inference", f"{med_l - med_i:.1f}", "", ""]])
    print(json.dumps({"bare_ms": med_b, "node_inference_ms": med_i, "ros_ms": med_l,
                      "node_wait_ms": float(np.median(stages[:, 0])),
                      "node_frame_to_command_ms": float(np.median(stages[:, 1])),
                      "bare_idle_ms": med_bi,
                      "overhead_vs_bare_ms": med_l - med_b, "overhead_vs_bare_idle_ms": med_l - med_bi,
                      "overhead_vs_node_ms": med_l - med_i}))

if __name__ == "__main__":
    main()
