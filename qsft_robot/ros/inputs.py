"""Bounds on what the policy node accepts from the outside: instruction length and frame age.

Both are pure functions so that the node's callbacks stay thin and the rules are unit-tested without
ROS. An unbounded instruction makes every inference slower (prompt length) and floods the log; a frame
whose header says it was taken seconds ago must not count as fresh just because it arrived now.
"""
from __future__ import annotations

PREVIEW_CHARS = 60  # how much of an over-long instruction a log line may show


def bound_instruction(text: str, max_chars: int) -> tuple[str, str | None]:
    """Return (text cut to max_chars, a one-line warning or None). The warning never holds the full text."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text, None
    preview = text[:PREVIEW_CHARS].replace("\n", " ")
    return text[:max_chars], (f"instruction of {len(text)} characters truncated to max_instruction_chars={max_chars}"
                              f" (starts {preview!r}...)")


def stamp_age(now_ns: int, stamp_ns: int) -> float | None:
    """Seconds since a header stamp, or None when the stamp is unset (0): then only arrival time counts."""
    if stamp_ns <= 0:
        return None
    return (now_ns - stamp_ns) * 1e-9


def frame_origin(arrival: float, age_from_stamp: float | None, skew_tolerance: float) -> tuple[float, str | None]:
    """The time (on the arrival clock) the frame is treated as taken, and a warning when the stamp is
    unusable.

    A stamped frame is as old as its stamp says, less `skew_tolerance` for clock offset between camera
    and node, and never younger than its arrival. A stamp further in the future than the tolerance
    means the clocks disagree: arrival time is used and the caller warns.
    """
    if age_from_stamp is None:
        return arrival, None
    if age_from_stamp < -skew_tolerance:
        return arrival, (f"header.stamp is {-age_from_stamp:.3f}s in the future (skew tolerance "
                         f"{skew_tolerance}s): clocks disagree, using arrival time")
    return arrival - max(0.0, age_from_stamp - skew_tolerance), None


OLD_STAMP_FACTOR = 10.0  # a stamp this many max_image_age in the past is a clock problem, not a slow camera


def old_stamp_warning(age_from_stamp: float | None, max_image_age: float) -> str | None:
    """A warning when header.stamp is far in the past (> OLD_STAMP_FACTOR x max_image_age), else None.

    Such frames are never acted on (they are stale); the warning says why the robot does not move when
    the camera's clock is off or a bag is replayed without sim time.
    """
    if age_from_stamp is None or age_from_stamp <= OLD_STAMP_FACTOR * max_image_age:
        return None
    return (f"header.stamp is {age_from_stamp:.1f}s in the past (max_image_age {max_image_age}s): frames are "
            "treated as stale and never acted on; check the camera's clock (or use_sim_time for a bag)")
