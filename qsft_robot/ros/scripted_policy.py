"""A scripted, image-only policy behind the same act() interface as a trained checkpoint.

It lets the robot loop (camera -> node -> command -> robot) be brought up and tested before a model
is trusted: for 'drive to the <colour> cone' it steers toward the colour's blob in the image.
For an arm profile (4 dims: end-effector delta xyz + gripper) the same steering becomes a forward and
sideways end-effector move with the gripper open, so the arm's command path can be brought up too.
"""
from __future__ import annotations

import re

import numpy as np

RGB = {"red": (230, 25, 25), "green": (25, 205, 25), "blue": (25, 50, 240), "yellow": (240, 215, 25)}


class ColorSeekPolicy:
    def __init__(self, action_dim: int = 2):
        if action_dim not in (2, 4):
            raise ValueError(f"color_seek drives a base (2 dims) or an arm (4 dims), not {action_dim} dims")
        self.action_dim = action_dim

    def act(self, images: np.ndarray, instructions: list[str], states=None) -> np.ndarray:
        out = []
        for img, text in zip(images, instructions):
            img = img[0] if img.ndim == 4 else img
            m = re.search("|".join(RGB), text.lower())
            if m is None:
                out.append([0.0, 0.0])
                continue
            dist = np.abs(img.astype(np.int32) - np.array(RGB[m.group(0)])).sum(-1)
            mask = dist < 120
            if mask.sum() < 3:  # not in view: turn in place to search
                out.append([0.0, 0.6])
                continue
            cols = np.nonzero(mask)[1]
            offset = (cols.mean() / (img.shape[1] - 1)) * 2 - 1  # -1 left .. 1 right
            out.append([float(np.clip(1.0 - 1.5 * abs(offset), 0, 1)), float(np.clip(-1.5 * offset, -1, 1))])
        base = np.asarray(out, dtype=np.float64).reshape(-1, 2)
        if self.action_dim == 2:
            return base
        # arm: forward = x, turn = sideways y, no height change, gripper open (-1)
        return np.stack([base[:, 0], base[:, 1], np.zeros(len(base)), -np.ones(len(base))], axis=1)
