"""Mobile base: a differential-drive robot in an arena with coloured cones, egocentric camera."""
from __future__ import annotations

import mujoco
import numpy as np

from qsft_robot.sim.mujoco_task import COLORS, MujocoTask

CONES = ("red", "green", "blue", "yellow")
ARENA = 2.0
GOAL_RADIUS = 0.45  # success: the base centre this close to the target cone (m)


def _xml() -> str:
    cones = "".join(
        f'<body name="cone_{c}" pos="0 0 0.15"><geom name="cone_{c}_geom" type="cylinder" size="0.08 0.15" '
        f'rgba="{r} {g} {b} 1"/></body>' for c, (r, g, b) in ((c, COLORS[c]) for c in CONES))
    return f"""
<mujoco model="arena">
  <option timestep="0.01" integrator="implicitfast"/>
  <visual><global offwidth="640" offheight="640"/><quality shadowsize="0" offsamples="0"/></visual>
  <worldbody>
    <light pos="0 0 4" dir="0 0 -1" diffuse="0.9 0.9 0.9" castshadow="false"/>
    <geom name="floor" type="plane" size="{ARENA + 0.5} {ARENA + 0.5} 0.01" rgba="0.55 0.55 0.5 1"/>
    <camera name="overview" pos="0 -3.2 4.2" xyaxes="1 0 0 0 0.8 0.6"/>
    <body name="base" pos="0 0 0.1">
      <joint name="x" type="slide" axis="1 0 0" damping="0"/>
      <joint name="y" type="slide" axis="0 1 0" damping="0"/>
      <joint name="yaw" type="hinge" axis="0 0 1" damping="0"/>
      <geom name="chassis" type="box" size="0.15 0.1 0.06" rgba="0.3 0.3 0.35 1" mass="5"/>
      <geom name="nose" type="box" size="0.03 0.03 0.03" pos="0.15 0 0.04" rgba="1 1 1 1" mass="0.1"/>
      <camera name="ego" pos="0.16 0 0.12" xyaxes="0 -1 0 0.1 0 1" fovy="80"/>
    </body>
    {cones}
  </worldbody>
  <actuator>
    <velocity name="vx" joint="x" kv="200"/>
    <velocity name="vy" joint="y" kv="200"/>
    <velocity name="wz" joint="yaw" kv="20"/>
  </actuator>
</mujoco>"""


class MobileBaseTask(MujocoTask):
    """Action: (linear velocity, angular velocity) in [-1, 1], scaled by max_lin (m/s) / max_ang (rad/s)."""

    action_dim = 2
    state_dim = 2
    camera = "ego"
    phrase_family = "base"

    def __init__(self, max_lin: float = 0.5, max_ang: float = 1.5, control_dt: float = 0.2, target: str = "",
                 **kw):
        kw.setdefault("max_steps", 50)
        if target and target not in CONES:
            raise ValueError(f"unknown cone {target!r}; choose from {CONES}")
        super().__init__(**kw)
        self.fixed_target = target  # '' : a random cone per episode (language-conditioned)
        self.max_lin, self.max_ang, self.control_dt = max_lin, max_ang, control_dt

    def _build(self) -> None:
        self.model = mujoco.MjModel.from_xml_string(_xml())
        self._cone_body = {c: mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, f"cone_{c}") for c in CONES}

    def cone_pos(self, c: str) -> np.ndarray:
        return self.model.body_pos[self._cone_body[c]][:2].copy()

    @property
    def pose(self) -> np.ndarray:
        return self.data.qpos[:3].copy()

    @property
    def robot_position(self) -> np.ndarray:
        return self.pose[:2]

    def _randomize(self) -> None:
        pts: list[np.ndarray] = []
        while len(pts) < len(CONES):
            p = self.rng.uniform(-ARENA + 0.3, ARENA - 0.3, size=2)
            if np.linalg.norm(p) > 0.8 and all(np.linalg.norm(p - q) > 0.7 for q in pts):
                pts.append(p)
        for c, p in zip(CONES, pts):
            self.model.body_pos[self._cone_body[c]][:2] = p
        self.data.qpos[:3] = [0.0, 0.0, self.rng.uniform(-np.pi, np.pi)]
        self.target = self.fixed_target or CONES[self.rng.integers(len(CONES))]
        self.instruction = f"drive to the {self.target} cone"

    def _apply(self, action: np.ndarray) -> None:
        v = float(np.clip(action[0], -1, 1)) * self.max_lin
        w = float(np.clip(action[1], -1, 1)) * self.max_ang
        n = int(round(self.control_dt / self.model.opt.timestep))
        for _ in range(n):  # unicycle: world-frame velocity targets from the current heading
            yaw = self.data.qpos[2]
            self.data.ctrl[:] = [v * np.cos(yaw), v * np.sin(yaw), w]
            mujoco.mj_step(self.model, self.data)

    def _state(self) -> np.ndarray:
        return np.array([np.hypot(*self.data.qvel[:2]), self.data.qvel[2]])

    def _oracle(self) -> np.ndarray:
        """Each cone's position in the robot frame (forward, left), in CONES order."""
        x, y, yaw = self.pose
        c, s = np.cos(yaw), np.sin(yaw)
        rel = [self.cone_pos(k) - (x, y) for k in CONES]
        return np.concatenate([[c * d[0] + s * d[1], -s * d[0] + c * d[1]] for d in rel])

    def _success(self) -> bool:
        return bool(np.linalg.norm(self.pose[:2] - self.cone_pos(self.target)) < GOAL_RADIUS)
