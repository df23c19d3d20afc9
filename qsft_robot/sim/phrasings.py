"""Instruction phrasings of the language-conditioned tasks: one set the data is logged with, one held out.

Why two disjoint sets: a policy that only matched the training sentences word for word scores on the
`seen` set and fails on `unseen`; one whose language model knows that "crimson" is a red and a "pylon"
is a cone keeps its success. Held out are both the sentence frames and the colour words (synonyms drawn
beside the plain colour name), so the test is the one a user's own wording poses.
"""
from __future__ import annotations

import numpy as np

SPLITS = ("seen", "unseen")
# {c}: the colour word. Per task family (sim/arm.py reach, sim/mobile_base.py)
SEEN = {
    "arm": ("reach the {c} block", "move the gripper to the {c} block", "go to the {c} block"),
    "base": ("drive to the {c} cone", "go to the {c} cone", "navigate to the {c} cone"),
}
UNSEEN = {
    "arm": ("touch the {c} cube", "put your hand on the {c} brick", "bring the claw over to the {c} cube"),
    "base": ("go over to the {c} marker", "head for the {c} pylon", "make your way to the {c} traffic cone"),
}
SYNONYMS = {"red": ("crimson", "scarlet"), "green": ("emerald", "lime"), "blue": ("azure", "navy"),
            "yellow": ("golden", "lemon")}


def phrase(family: str, colour: str, split: str, rng: np.random.Generator) -> str:
    """One instruction naming `colour` for a task of `family`: a `seen` frame with the plain colour name,
    or an `unseen` frame with the colour name or one of its synonyms."""
    if split not in SPLITS:
        raise ValueError(f"unknown phrasing split {split!r}; choose from {SPLITS}")
    frames = (SEEN if split == "seen" else UNSEEN)[family]
    frame = frames[rng.integers(len(frames))]
    words = (colour,) if split == "seen" else (colour, *SYNONYMS[colour])
    return frame.format(c=words[rng.integers(len(words))])
