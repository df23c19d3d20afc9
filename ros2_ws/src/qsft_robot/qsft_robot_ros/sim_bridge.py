"""MuJoCo task as a ROS 2 robot: publishes its camera as sensor_msgs/Image and applies the commands
it receives, so the whole loop (camera -> policy node -> command -> physics) runs over real ROS 2."""
from __future__ import annotations

import json
import os
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from geometry_msgs.msg import Twist  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402

from qsft_robot.ros.image_conv import rgb_to_image_fields  # noqa: E402
from qsft_robot.ros.profiles import RobotProfile  # noqa: E402
from qsft_robot.sim.registry import make_task  # noqa: E402
from qsft_robot_ros.policy_node import profiles_dir  # noqa: E402

class SimBridge(Node):
    def __init__(self):
        super().__init__("qsft_sim_bridge")
        defaults = {"task": "base_goto", "seed": 0, "rate_hz": 5.0, "image_size": 64, "robot_profile": "base",
                    "image_topic": "/camera/image_raw", "command_topic": "/cmd_vel", "status_topic": "/sim/status",
                    "max_steps": 200}
        for k, v in defaults.items():
            self.declare_parameter(k, v)
        p = {k: self.get_parameter(k).value for k in defaults}
        self.env = make_task(p["task"], image_size=int(p["image_size"]), max_steps=int(p["max_steps"]))
        self.obs, _ = self.env.reset(seed=int(p["seed"]))
        self.profile = RobotProfile.load(profiles_dir() / f"{p['robot_profile']}.yaml")
        self.command = np.zeros(len(self.profile.scale))
        self.done = False
        self.success = False
        self.img_pub = self.create_publisher(Image, p["image_topic"], 10)
        self.status_pub = self.create_publisher(String, p["status_topic"], 10)
        msg_type = Twist if self.profile.kind == "base" else Float64MultiArray
        self.create_subscription(msg_type, p["command_topic"], self.on_command, 10)
        self.create_timer(1.0 / float(p["rate_hz"]), self.tick)
        self.get_logger().info(f"sim bridge: {p['task']} seed {p['seed']}: {self.env.instruction!r}")

    def on_command(self, msg) -> None:
        cmd = [msg.linear.x, msg.angular.z] if isinstance(msg, Twist) else list(msg.data)
        self.command = np.asarray(cmd) / np.asarray(self.profile.scale)  # back to normalised action

    def tick(self) -> None:
        if not self.done:
            self.obs, _, term, trunc, info = self.env.step(self.command)
            self.success = bool(info["success"])
            self.done = term or trunc
        f = rgb_to_image_fields(self.obs["images"][self.env.camera])
        msg = Image(encoding=f["encoding"], height=f["height"], width=f["width"], step=f["step"], data=f["data"])
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.env.camera
        self.img_pub.publish(msg)
        self.status_pub.publish(String(data=json.dumps({"t": self.env.t, "success": self.success, "done": self.done,
                                                        "instruction": self.env.instruction})))


def main(args=None) -> None:
    rclpy.init(args=args)
    node = SimBridge()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
