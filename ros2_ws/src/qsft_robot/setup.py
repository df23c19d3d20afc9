"""
The ament_python package `qsft_robot`.

Its Python module is `qsft_robot_ros` so that it never shadows the core `qsft_robot` library
(pip-installed) that the node imports.
"""
from glob import glob

from setuptools import setup

package_name = "qsft_robot"

setup(
    name=package_name,
    version="0.1.0",
    packages=["qsft_robot_ros"],
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
        ("share/" + package_name + "/config/sim", glob("config/sim/*.yaml")),
        # robot profiles live once, in the repository's configs/robots; installed beside the params
        ("share/" + package_name + "/config/robots", glob("../../../configs/robots/*.yaml")),
    ],
    install_requires=["setuptools"],
    extras_require={"test": ["pytest"]},
    zip_safe=True,
    maintainer="qsft_robot maintainers",
    maintainer_email="maintainers@qsft-robot.invalid",
    description="Q-SFT VLA policy node for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "policy_node = qsft_robot_ros.policy_node:main",
            "sim_bridge = qsft_robot_ros.sim_bridge:main",
        ],
    },
)
