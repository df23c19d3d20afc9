"""Tabletop arm: a mocap-driven hand over coloured blocks; reach, push and pick-and-place.

The gripper is a 'magnetic' one (a weld constraint switched on when closed next to a block) rather
than two actuated fingers: it keeps grasping in physics (the block is held by a constraint and
falls when released) while staying cheap enough to collect thousands of episodes on a laptop CPU.
"""
from __future__ import annotations

import mujoco
import numpy as np

from qsft_robot.sim.mujoco_task import COLORS, MujocoTask

BLOCKS = ("red", "green", "blue")
TABLE_X, TABLE_Y = (-0.22, 0.22), (-0.18, 0.18)
HAND_Z0 = 0.12
BLOCK_HALF = 0.02
REACH_RADIUS = 0.03  # reach succeeds with the hand this close to the block in x-y (m), and low
REACH_HEIGHT = 0.08


def _xml() -> str:
    blocks = "".join(
        f'<body name="{c}" pos="0 0 {BLOCK_HALF}"><freejoint name="{c}_free"/>'
        f'<geom name="{c}_geom" type="box" size="{BLOCK_HALF} {BLOCK_HALF} {BLOCK_HALF}" mass="0.05" '
        f'rgba="{r} {g} {b} 1" friction="1 0.05 0.01"/></body>'
        for c, (r, g, b) in ((c, COLORS[c]) for c in BLOCKS))
    welds = "".join(f'<weld name="grip_{c}" body1="hand" body2="{c}" active="false"/>' for c in BLOCKS)
    return f"""
<mujoco model="tabletop">
  <option timestep="0.005" gravity="0 0 -9.81"/>
  <visual><global offwidth="640" offheight="640"/><quality shadowsize="0" offsamples="0"/></visual>
  <worldbody>
    <light pos="0 0 1.5" dir="0 0 -1" diffuse="0.8 0.8 0.8" castshadow="false"/>
    <geom name="table" type="plane" size="0.4 0.4 0.01" rgba="0.75 0.7 0.6 1"/>
    <camera name="front" pos="0 -0.42 0.55" xyaxes="1 0 0 0 0.8 0.6" fovy="55"/>
    <body name="hand" mocap="true" pos="0 0 {HAND_Z0}">
      <geom name="hand_geom" type="sphere" size="0.018" rgba="0.2 0.2 0.2 1" contype="1" conaffinity="1"/>
      <geom name="hand_ring" type="cylinder" size="0.028 0.004" pos="0 0 0.02" rgba="0.95 0.95 0.95 1"
            contype="0" conaffinity="0"/>
      <camera name="wrist" pos="0 0 0.3" xyaxes="1 0 0 0 1 0" fovy="75"/>
    </body>
    {blocks}
  </worldbody>
  <equality>{welds}</equality>
</mujoco>"""


class ArmTask(MujocoTask):
    """Action: end-effector delta (x, y, z) in [-1, 1] (scaled by `max_delta` metres) + gripper (>0 closes)."""

    action_dim = 4
    state_dim = 4
    CAMERAS = ("wrist", "front")
    TASK_KINDS = ("reach", "push", "pick_place")
    video_camera = "front"
    phrase_family = "arm"    # reach only: sim/phrasings.py names one block

    def __init__(self, kind: str = "reach", max_delta: float = 0.03, substeps: int = 10, camera: str = "wrist",
                 target: str = "", **kw):
        """camera: 'wrist' (eye-in-hand, 0.3 m above the gripper looking down; the default) or 'front'.

        Why eye-in-hand by default: the target's offset from the image centre *is* the motion to make,
        the way wrist cameras serve real manipulation policies; with the fixed 'front' view a small
        model must also learn the camera's projection before it can reach (measured with the from-scratch
        tower, `tiny_scratch`: 0.20 success after 900 BC steps on expert data from the front view).
        """
        if kind not in self.TASK_KINDS:
            raise ValueError(f"unknown arm task kind {kind!r}; choose from {self.TASK_KINDS}")
        if camera not in self.CAMERAS:
            raise ValueError(f"unknown arm camera {camera!r}; choose from {self.CAMERAS}")
        if target and target not in BLOCKS:
            raise ValueError(f"unknown block {target!r}; choose from {BLOCKS}")
        if kw.get("phrasings") and kind != "reach":
            raise ValueError(f"phrasings name the one block of a reach; {kind!r} names two")
        self.camera = camera
        self.fixed_target = target  # '' : a random block per episode (language-conditioned)
        kw.setdefault("max_steps", {"reach": 30, "push": 60, "pick_place": 70}[kind])
        super().__init__(**kw)
        self.kind = kind
        self.max_delta = max_delta
        self.substeps = substeps
        self.goal = ""
        self.gripped: str | None = None

    def _build(self) -> None:
        self.model = mujoco.MjModel.from_xml_string(_xml())
        self._weld = {c: mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_EQUALITY, f"grip_{c}") for c in BLOCKS}
        self._qadr = {c: self.model.jnt_qposadr[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, f"{c}_free")]
                      for c in BLOCKS}

    def block_pos(self, c: str) -> np.ndarray:
        return self.data.xpos[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, c)].copy()

    @property
    def hand_pos(self) -> np.ndarray:
        return self.data.mocap_pos[0].copy()

    robot_position = hand_pos

    def _randomize(self) -> None:
        pts: list[np.ndarray] = []
        while len(pts) < len(BLOCKS):  # rejection sampling: blocks at least 8 cm apart
            p = np.array([self.rng.uniform(*TABLE_X), self.rng.uniform(*TABLE_Y)])
            if all(np.linalg.norm(p - q) > 0.08 for q in pts):
                pts.append(p)
        for c, p in zip(BLOCKS, pts):
            a = self._qadr[c]
            self.data.qpos[a:a + 7] = [p[0], p[1], BLOCK_HALF, 1, 0, 0, 0]
        self.data.mocap_pos[0] = [self.rng.uniform(-0.1, 0.1), self.rng.uniform(-0.1, 0.1), HAND_Z0]
        self.data.eq_active[:] = 0
        self.gripped = None
        order = self.rng.permutation(len(BLOCKS))
        self.target = BLOCKS[order[0]]
        self.goal = BLOCKS[order[1]]
        if self.fixed_target:
            self.target = self.fixed_target
            self.goal = next(b for b in (BLOCKS[i] for i in order) if b != self.target)
        self.instruction = {
            "reach": f"reach the {self.target} block",
            "push": f"push the {self.target} block to the {self.goal} block",
            "pick_place": f"pick the {self.target} block and place it on the {self.goal} block",
        }[self.kind]

    def _apply(self, action: np.ndarray) -> None:
        delta = np.clip(action[:3], -1, 1) * self.max_delta
        pos = self.data.mocap_pos[0] + delta
        pos[0] = np.clip(pos[0], -0.3, 0.3)
        pos[1] = np.clip(pos[1], -0.3, 0.3)
        pos[2] = np.clip(pos[2], BLOCK_HALF, 0.25)
        self.data.mocap_pos[0] = pos
        close = action[3] > 0
        if close and self.gripped is None:
            for c in BLOCKS:
                if np.linalg.norm(self.block_pos(c) - pos) < 0.05:
                    self._grip(c)
                    break
        elif not close and self.gripped is not None:
            self.data.eq_active[self._weld[self.gripped]] = 0
            self.gripped = None
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)

    def _grip(self, c: str) -> None:
        # the weld keeps the current relative pose: set it from the bodies' poses now
        eid = self._weld[c]
        rel = self.block_pos(c) - self.hand_pos
        self.model.eq_data[eid, 3:6] = rel       # relpos of body2 in body1 frame (hand is unrotated)
        self.model.eq_data[eid, 6:10] = [1, 0, 0, 0]
        self.data.eq_active[eid] = 1
        self.gripped = c

    def _state(self) -> np.ndarray:
        return np.concatenate([self.hand_pos, [1.0 if self.gripped else 0.0]])

    def _oracle(self) -> np.ndarray:
        """Each block's offset from the hand (x, y, z), in BLOCKS order; the target is fixed per task name."""
        return np.concatenate([self.block_pos(c) - self.hand_pos for c in BLOCKS])

    def _success(self) -> bool:
        t = self.block_pos(self.target)
        if self.kind == "reach":
            return bool(np.linalg.norm(self.hand_pos[:2] - t[:2]) < REACH_RADIUS and self.hand_pos[2] < REACH_HEIGHT)
        g = self.block_pos(self.goal)
        if self.kind == "push":
            return bool(np.linalg.norm(t[:2] - g[:2]) < 0.06)
        return bool(np.linalg.norm(t[:2] - g[:2]) < 0.025 and t[2] > g[2] + 0.03 and self.gripped is None)
