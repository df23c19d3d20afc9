"""Scripted experts with a quality knob: the source of mixed-quality offline data.

Quality degrades the way real logs do: per-step action noise, whole episodes that go for the wrong
object, and episodes where the operator stops early. That mix is what Q-SFT should see through.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qsft_robot.sim.arm import BLOCK_HALF, BLOCKS, HAND_Z0, ArmTask
from qsft_robot.sim.mobile_base import CONES, GOAL_RADIUS, MobileBaseTask


@dataclass(frozen=True)
class Quality:
    noise: float = 0.0          # std of Gaussian action noise (action units, actions in [-1, 1])
    wrong_target: float = 0.0   # probability an episode goes for another object
    early_stop: float = 0.0     # probability the expert freezes part-way through the episode
    # which other object a wrong episode goes for: "random", or "nearest" (the distractor closest to
    # the robot at the start: a language-blind operator's systematic mistake, so that in the logs the
    # *most common* action at the start of an episode is the wrong one, which is where BC fails)
    wrong_choice: str = "random"
    # probability the operator changes its mind once, between 15% and 45% of the time limit: from the
    # right object to the wrong one (a failure whose first part is good behaviour) or back (a success
    # with a detour). Filtering on success throws the first kind away and copies the detours; a value
    # function can keep the good first parts, which is what offline RL's "stitching" is about
    switch: float = 0.0
    # > 0: every run is logged in part, as its *head* (from the start to a cut on the way to the object it
    # heads for, where it stops; probability `segments`) or as its *tail* (from that cut to the end, on a
    # run that goes for the task's own object), or whole when it goes for another object (probability
    # `whole_wrong`: the failures that say where the other objects lead). The cut: part-way for the base;
    # for the arm, whose segmented operators approach above the block at the start height and then
    # descend, the first step of the descent. No log goes from a start state to the goal, so imitating the
    # successes only covers states after the cut, and a value function must join heads to tails (stitching)
    segments: float = 0.0
    whole_wrong: float = 0.0

    @classmethod
    def preset(cls, name: str) -> "Quality":
        presets = {"expert": cls(0.05, 0.0, 0.0), "mixed": cls(0.3, 0.45, 0.2), "poor": cls(0.6, 0.7, 0.3),
                   "biased": cls(0.2, 0.6, 0.0, "nearest"), "stitch": cls(0.2, 0.6, 0.0, "nearest", 0.5),
                   "segments": cls(0.2, 0.6, 0.0, "nearest", segments=0.4, whole_wrong=0.2)}
        if name not in presets:
            raise ValueError(f"unknown quality {name!r}; choose from {sorted(presets)}")
        return presets[name]


def draw_stop_and_switch(rng: np.random.Generator, q: Quality, max_steps: int) -> tuple[int | None, int | None]:
    """The step the operator freezes at (a hesitation that times out) and the step it changes its mind
    at, or None each; drawn in this order right after the wrong-target choice (one function, so that the
    built-in and the Gymnasium operators apply a preset's stop and switch knobs alike)."""
    stops = rng.random() < q.early_stop
    stop_at = int(rng.integers(2, max(3, max_steps // 2))) if stops else None
    switches = q.switch > 0 and rng.random() < q.switch  # no draw otherwise: older presets' data stays
    switch_at = int(rng.integers(int(0.15 * max_steps), int(0.45 * max_steps) + 1)) if switches else None
    return stop_at, switch_at


CUT_FRACTION = (0.4, 0.6)  # a segmented base run is cut once it has covered this share of its way (uniform draw)
ABOVE_TOLERANCE = 0.01     # m: a segmented arm run's approach ends this close above the block (x-y)


def draw_segment(rng: np.random.Generator, q: Quality) -> tuple[str | None, float]:
    """A segmented run's part, "head", "tail" or "whole" (a run for another object), or None (every run
    logged whole: the other presets), and where it is cut (the share of the way to the goal's boundary
    covered by then). Drawn after the stop and switch draws, and only for segmented presets, so that the
    other presets' data stays what it was."""
    if q.segments <= 0:
        return None, 1.0
    u = rng.random()
    part = "head" if u < q.segments else "whole" if u < q.segments + q.whole_wrong else "tail"
    return part, float(rng.uniform(*CUT_FRACTION))


def make_expert(env, quality: Quality | str = "expert", seed: int = 0):
    """The degraded scripted operator for any task: the built-in tasks' own, or for a Gymnasium task
    with a scripted policy (e.g. Meta-World's) the same quality knobs around that policy."""
    if hasattr(env, "expert_action"):
        from qsft_robot.sim.gym_experts import GymExpert
        return GymExpert(env, quality, seed)
    return ScriptedExpert(env, quality, seed)


class ScriptedExpert:
    """Privileged controller (reads the sim state), degraded by `quality`."""

    def __init__(self, env, quality: Quality | str = "expert", seed: int = 0):
        self.env = env
        self.quality = Quality.preset(quality) if isinstance(quality, str) else quality
        self.rng = np.random.default_rng(seed)
        self.aim = ""
        self.aim_goal = ""
        self.stop_at = None
        self.switch_at = None
        self.phase = 0
        self.part: str | None = None   # segmented presets: "head" or "tail" of the run is logged
        self.cut_fraction = 1.0
        self.cut_at: int | None = None  # the step the run was cut at, once it has been
        self.way = 0.0                  # distance to the goal's boundary at the start
        self.descent_at = 0             # segmented arm runs: the step their descent began

    def reset(self) -> dict:
        """Call after env.reset(); returns the episode's degradation (recorded for analysis)."""
        q, env = self.quality, self.env
        names = BLOCKS if isinstance(env, ArmTask) else CONES
        self.aim, self.aim_goal = env.target, getattr(env, "goal", "")
        wrong = self.rng.random() < q.wrong_target
        if wrong:
            others = [n for n in names if n != env.target]
            if q.wrong_choice == "nearest":
                self.aim = self._nearest_other()
            else:
                self.aim = self.rng.choice(others)
        self.stop_at, self.switch_at = draw_stop_and_switch(self.rng, q, env.max_steps)
        self.phase = 0
        self.part, self.cut_fraction = draw_segment(self.rng, q)
        self.cut_at = None
        if self.part is not None:
            if isinstance(env, ArmTask) and env.kind != "reach":
                raise ValueError("segmented data is defined for reaching and driving to an object (arm_reach*, "
                                 f"base_goto*), not for arm {env.kind}")
            if self.part == "tail":  # a tail is the end of a run for the task's own object
                self.aim, wrong = env.target, False
            elif self.part == "whole" and not wrong:  # logged whole only when it goes for another object
                self.aim, wrong = self._nearest_other() if q.wrong_choice == "nearest" else self.rng.choice(
                    [n for n in names if n != env.target]), True
            self.way = 0.0 if isinstance(env, ArmTask) else self._to_boundary()
        return {"wrong_target": bool(wrong), "early_stop": self.stop_at is not None,
                "switch": self.switch_at is not None, "segment": self.part}

    def _to_boundary(self) -> float:
        """Distance (x-y, m) from the base to the edge of the success region around the aimed cone."""
        env = self.env
        return max(float(np.linalg.norm(env.pose[:2] - env.cone_pos(self.aim))) - GOAL_RADIUS, 0.0)

    def _at_cut(self) -> bool:
        """Where a segmented run is cut. Arm: above the aimed block once the descent has begun (a segmented
        operator approaches at the start height, then descends; a tail is the descent only). Base: part-way to the
        aimed cone (cut_fraction of the way to its success region), or one action from that region, so
        that a head never reaches the goal."""
        env = self.env
        if isinstance(env, ArmTask):  # above the block after one step of descent: below any evaluation start
            return self.phase >= 1 and env.t > self.descent_at
        return self._to_boundary() <= max((1 - self.cut_fraction) * self.way, env.max_lin * env.control_dt)

    def cut_reached(self) -> bool:
        """Whether a segmented run has reached its cut (latched at the first such step, never the start)."""
        if self.part in ("head", "tail") and self.cut_at is None and self.env.t >= 1 and self._at_cut():
            self.cut_at = self.env.t
        return self.cut_at is not None

    def stop_action(self) -> np.ndarray:
        """Standing still (a head's last logged action, at its cut): no motion, the gripper as it is."""
        a = np.zeros(self.env.action_dim)
        if isinstance(self.env, ArmTask):
            a[3] = 1.0 if self.env.gripped else -1.0
        return a

    def _switch(self) -> None:
        """Change of mind: right object -> the wrong one nearest the robot now, or wrong -> right."""
        self.aim = self._nearest_other() if self.aim == self.env.target else self.env.target
        self.phase = 0

    def _nearest_other(self) -> str:
        """The distractor closest to the robot now: a language-blind operator's choice."""
        env = self.env
        names = BLOCKS if isinstance(env, ArmTask) else CONES
        others = [n for n in names if n != env.target]
        return min(others, key=lambda n: float(np.linalg.norm(self._pos(n)[:2] - self._start_xy())))

    def _pos(self, name: str) -> np.ndarray:
        return self.env.block_pos(name) if isinstance(self.env, ArmTask) else self.env.cone_pos(name)

    def _start_xy(self) -> np.ndarray:
        return self.env.hand_pos[:2] if isinstance(self.env, ArmTask) else self.env.pose[:2]

    def act(self) -> np.ndarray:
        env = self.env
        if self.switch_at is not None and env.t == self.switch_at:
            self._switch()
        if self.stop_at is not None and env.t >= self.stop_at:
            return self.stop_action()
        a = self._arm() if isinstance(env, ArmTask) else self._base()
        a = a + self.rng.normal(0.0, self.quality.noise, size=a.shape) * (np.arange(a.size) < 3)
        return np.clip(a, -1.0, 1.0)

    # ---- arm ---------------------------------------------------------------------------------
    def _move(self, goal: np.ndarray) -> np.ndarray:
        return np.clip((goal - self.env.hand_pos) / self.env.max_delta, -1.0, 1.0)

    def _arm(self) -> np.ndarray:
        env: ArmTask = self.env
        hand, tgt = env.hand_pos, env.block_pos(self.aim)
        grip = -1.0
        if env.kind == "reach":
            if self.part is not None and self.phase == 0:  # segmented runs: approach at the start height first
                if np.linalg.norm(hand[:2] - tgt[:2]) >= ABOVE_TOLERANCE:
                    return np.append(self._move(np.append(tgt[:2], HAND_Z0)), grip)
                self.phase, self.descent_at = 1, env.t
            return np.append(self._move(tgt + [0, 0, 0.03]), grip)
        if env.kind == "push":
            goal = env.block_pos(self.aim_goal)
            direction = (goal[:2] - tgt[:2]) / (np.linalg.norm(goal[:2] - tgt[:2]) + 1e-9)
            behind = np.append(tgt[:2] - 0.05 * direction, BLOCK_HALF)
            if self.phase == 0:
                above = behind + [0, 0, 0.08]
                if np.linalg.norm(hand[:2] - above[:2]) < 0.01:
                    self.phase = 1
                return np.append(self._move(above), grip)
            if self.phase == 1:
                if abs(hand[2] - behind[2]) < 0.01:
                    self.phase = 2
                return np.append(self._move(behind), grip)
            contact = tgt[:2] - 0.04 * direction     # sphere touching the block's far side
            if np.linalg.norm(hand[:2] - contact) > 0.03:  # slid off the line: approach again
                self.phase = 0
            return np.append(self._move(np.append(contact + 0.03 * direction, BLOCK_HALF)), grip)
        # pick and place
        goal = env.block_pos(self.aim_goal)
        if self.phase == 0:  # above the block
            if np.linalg.norm(hand[:2] - tgt[:2]) < 0.008:
                self.phase = 1
            return np.append(self._move(np.append(tgt[:2], 0.1)), -1.0)
        if self.phase == 1:  # descend
            if hand[2] - tgt[2] < 0.045:
                self.phase = 2
            return np.append(self._move(tgt + [0, 0, 0.035]), -1.0)
        if self.phase == 2:  # close, lift
            if env.gripped is None:
                return np.append(np.zeros(3), 1.0)
            if hand[2] > 0.09:
                self.phase = 3
            return np.append(self._move(np.append(hand[:2], 0.12)), 1.0)
        if self.phase == 3:  # over the goal block
            if np.linalg.norm(hand[:2] - goal[:2]) < 0.008:
                self.phase = 4
            return np.append(self._move(np.append(goal[:2], 0.12)), 1.0)
        if self.phase == 4:  # lower onto it, release
            held = env.block_pos(env.gripped) if env.gripped else tgt
            if held[2] < goal[2] + 2 * BLOCK_HALF + 0.01:
                self.phase = 5
            return np.append(self._move(hand + (goal + [0, 0, 2 * BLOCK_HALF + 0.005] - held)), 1.0)
        return np.append(self._move(np.append(hand[:2], 0.12)), -1.0)

    # ---- base --------------------------------------------------------------------------------
    def _base(self) -> np.ndarray:
        env: MobileBaseTask = self.env
        x, y, yaw = env.pose
        dx, dy = env.cone_pos(self.aim) - [x, y]
        bearing = (np.arctan2(dy, dx) - yaw + np.pi) % (2 * np.pi) - np.pi
        w = np.clip(2.0 * bearing / env.max_ang, -1, 1)
        v = np.clip(np.hypot(dx, dy), 0, 1) * max(0.0, np.cos(bearing)) ** 4
        return np.array([v, w])
