"""A scripted, image-only policy behind the same act() interface as a trained checkpoint.

It lets the robot loop (camera -> node -> command -> robot) be brought up and tested before a model
is trusted: for 'drive to the <colour> cone' it steers toward the colour's blob in the image.
For an end-effector profile (4 dims: delta xyz + gripper) the same steering becomes a forward and
sideways end-effector move with the gripper open, so the arm's command path can be brought up too.
For a joint-position profile it holds the measured joints (its proprio state) and turns one joint, the
base pan, toward the blob by at most `pan_step` (the action's units) per action: a bring-up that moves
one joint a bounded amount, from where the arm is, in the direction the camera says.
"""
from __future__ import annotations

import re

import numpy as np

RGB = {"red": (230, 25, 25), "green": (25, 205, 25), "blue": (25, 50, 240), "yellow": (240, 215, 25)}


class ColorSeekPolicy:
    def __init__(self, action_dim: int = 2, action_space: str = "base_velocity", pan_joint: int = 0,
                 pan_step: float = 5.0):
        if action_space == "joint_position":
            if not 0 <= pan_joint < action_dim:
                raise ValueError(f"color_seek: pan_joint {pan_joint} is not one of the {action_dim} joints")
        elif action_dim not in (2, 4):
            raise ValueError(f"color_seek drives a base (2 dims) or an arm (4 dims), not {action_dim} dims")
        self.action_dim, self.action_space = action_dim, action_space
        self.pan_joint, self.pan_step = int(pan_joint), abs(float(pan_step))

    def steer(self, images: np.ndarray, instructions: list[str]) -> np.ndarray:
        """(N, 3): forward speed in [0, 1], turn in [-1, 1] (positive: left), and where the blob is in
        [-1, 1] (left .. right; 0 when it is not in view)."""
        out = []
        for img, text in zip(images, instructions):
            img = img[0] if img.ndim == 4 else img
            m = re.search("|".join(RGB), text.lower())
            if m is None:
                out.append([0.0, 0.0, 0.0])
                continue
            dist = np.abs(img.astype(np.int32) - np.array(RGB[m.group(0)])).sum(-1)
            mask = dist < 120
            if mask.sum() < 3:  # not in view: turn in place to search
                out.append([0.0, 0.6, 0.0])
                continue
            cols = np.nonzero(mask)[1]
            offset = (cols.mean() / (img.shape[1] - 1)) * 2 - 1  # -1 left .. 1 right
            out.append([float(np.clip(1.0 - 1.5 * abs(offset), 0, 1)), float(np.clip(-1.5 * offset, -1, 1)), offset])
        return np.asarray(out, dtype=np.float64).reshape(-1, 3)

    def act(self, images: np.ndarray, instructions: list[str], states=None) -> np.ndarray:
        steer = self.steer(images, instructions)
        if self.action_space == "joint_position":
            return self._hold_and_pan(steer[:, 2], states)
        base = steer[:, :2]
        if self.action_dim == 2:
            return base
        # arm: forward = x, turn = sideways y, no height change, gripper open (-1)
        return np.stack([base[:, 0], base[:, 1], np.zeros(len(base)), -np.ones(len(base))], axis=1)

    def _hold_and_pan(self, offset: np.ndarray, states) -> np.ndarray:
        """The measured joints, the pan joint turned toward the blob (a blob on the left turns it positive,
        counter-clockwise seen from above), by at most pan_step."""
        if states is None:
            raise ValueError("color_seek on joint positions needs the measured joints (joint_state_topic)")
        target = np.array(states, dtype=np.float64).reshape(len(offset), -1)
        if target.shape[1] != self.action_dim:
            raise ValueError(f"color_seek: {target.shape[1]} measured joints, profile has {self.action_dim}")
        target[:, self.pan_joint] -= self.pan_step * np.clip(offset, -1.0, 1.0)
        return target
