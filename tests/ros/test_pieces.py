"""The pure-Python parts of the ROS node, without rclpy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qsft_robot.ros.image_conv import ImageFormatError, compressed_to_rgb, image_to_rgb, rgb_to_image_fields
from qsft_robot.ros.safety import SafetyFilter, State, Watchdog

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("enc", ["rgb8", "bgr8"])
def test_image_round_trip(enc):
    img = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    f = rgb_to_image_fields(img, enc)
    np.testing.assert_array_equal(image_to_rgb(f["encoding"], f["height"], f["width"], f["step"], f["data"]), img)


def test_mono8_and_padded_step():
    data = bytes(range(12))  # 2 rows of width 5, step 6 (one padding byte)
    out = image_to_rgb("mono8", 2, 5, 6, data)
    assert out.shape == (2, 5, 3) and out[1, 0].tolist() == [6, 6, 6]


@pytest.mark.parametrize("args,msg", [
    (("yuv422", 2, 2, 4, bytes(8)), "unsupported encoding"),
    (("rgb8", 2, 2, 6, bytes(10)), "expected step"),
    (("rgb8", 2, 2, 5, bytes(10)), "step 5"),
    (("rgb8", 0, 0, 0, b""), "empty"),
])
def test_malformed_images_are_rejected_with_reason(args, msg):
    with pytest.raises(ImageFormatError, match=msg):
        image_to_rgb(*args)


def test_compressed_jpeg_decodes_and_garbage_is_rejected():
    import cv2

    img = np.full((16, 16, 3), (200, 30, 30), np.uint8)
    ok, buf = cv2.imencode(".png", img[..., ::-1])
    np.testing.assert_array_equal(compressed_to_rgb("png", buf.tobytes()), img)
    with pytest.raises(ImageFormatError):
        compressed_to_rgb("jpeg", b"not an image")


def test_safety_filter_clips_and_rate_limits():
    f = SafetyFilter([-1, -1], [1, 1], max_rate=[2, 2], max_dt=0.1)
    assert f([5, -5], now=0.0).tolist() == pytest.approx([0.2, -0.2])  # from rest: one tick's worth, clipped
    assert f([5, -5], now=0.1).tolist() == pytest.approx([0.4, -0.4])
    assert f([-1, 1], now=0.2).tolist() == pytest.approx([0.2, -0.2])
    assert f([np.nan, 0], now=0.3).tolist() == pytest.approx([0.0, 0.0])  # NaN -> 0, then slew-limited


def test_slew_limit_after_a_stop_and_after_a_long_gap():
    f = SafetyFilter([-0.5, -1.5], [0.5, 1.5], max_rate=[2.0, 6.0], max_dt=0.2)  # the base profile at 5 Hz
    for t in np.arange(0.0, 2.0, 0.2):
        out = f([1.0, 0.0], now=float(t))
    assert out.tolist() == pytest.approx([0.5, 0.0])
    f.reset(now=2.0)  # a stop: immediate, and the filter is at rest again
    assert f([1.0, 0.0], now=2.01).tolist() == pytest.approx([0.02, 0.0])
    f.reset(now=3.0)
    assert f([1.0, 0.0], now=60.0).tolist() == pytest.approx([0.4, 0.0])  # a long gap counts as one tick


def test_watchdog_states():
    w = Watchdog(max_image_age=0.5)
    assert w.tick(0.0, None, False) == State.WAITING
    assert w.tick(1.0, 0.9, False) == State.RUNNING
    assert w.tick(2.0, 0.9, False) == State.STALE
    assert w.tick(2.1, 2.05, False) == State.RUNNING
    assert w.tick(2.2, 2.15, False, command_frame_time=1.6) == State.LATE  # camera fine, inference too slow
    assert w.tick(2.3, 2.25, False, command_frame_time=2.2) == State.RUNNING
    assert w.tick(2.4, 2.35, True) == State.ESTOP
    assert w.tick(2.5, 2.45, False) == State.ESTOP  # latched
    w.reset_estop()
    assert w.tick(2.6, 2.55, False) == State.RUNNING
    assert w.tick(2.7, 2.65, False, fault=True) == State.FAULT
    assert w.tick(2.8, 2.75, False) == State.FAULT  # latched


def test_instruction_cap_truncates_with_one_short_warning():
    from qsft_robot.ros.inputs import bound_instruction

    assert bound_instruction("drive to the red cone", 256) == ("drive to the red cone", None)
    text = "go " * 40_000
    out, warning = bound_instruction(text, 256)
    assert out == text[:256] and "120000 characters" in warning and len(warning) < 200


def test_frame_age_from_stamp_with_skew_tolerance():
    from qsft_robot.ros.inputs import frame_origin, stamp_age

    assert stamp_age(10_000_000_000, 0) is None  # unset stamp: arrival time counts
    assert stamp_age(10_000_000_000, 5_000_000_000) == pytest.approx(5.0)
    assert frame_origin(100.0, None, 0.1) == (100.0, None)
    assert frame_origin(100.0, 5.0, 0.1)[0] == pytest.approx(95.1)  # stamped 5 s ago: that old, less skew
    assert frame_origin(100.0, 0.05, 0.1) == (100.0, None)  # within the skew: never younger than arrival
    origin, warning = frame_origin(100.0, -2.0, 0.1)  # 2 s in the future: clocks disagree
    assert origin == 100.0 and "future" in warning


def test_image_size_cap_rejects_before_copying():
    f = rgb_to_image_fields(np.zeros((480, 640, 3), np.uint8))
    assert image_to_rgb(f["encoding"], f["height"], f["width"], f["step"], f["data"], max_pixels=640 * 480).shape \
        == (480, 640, 3)
    with pytest.raises(ImageFormatError, match="exceeds max_image_pixels=1000"):
        image_to_rgb(f["encoding"], f["height"], f["width"], f["step"], f["data"], max_pixels=1000)


@pytest.mark.parametrize("dim", [2, 4])
def test_color_seek_emits_the_profile_action_size(dim):
    from qsft_robot.ros.policy_loader import load_policy, policy_action_dim

    pol = load_policy("color_seek", "", "argmax_q", "cpu", action_dim=dim)
    img = np.zeros((1, 1, 64, 64, 3), np.uint8)
    img[0, 0, 20:44, 24:40] = (230, 25, 25)
    out = pol.act(img, ["drive to the red cone"])
    assert out.shape == (1, dim) and policy_action_dim(pol) == dim and out[0, 0] > 0.1


def test_policy_loader_errors_and_plugins():
    from qsft_robot.ros.policy_loader import load_policy

    with pytest.raises(ValueError, match="unknown policy kind"):
        load_policy("nope", "", "argmax_q", "cpu", action_dim=2)
    with pytest.raises(ValueError, match="needs checkpoint"):
        load_policy("checkpoint", "", "argmax_q", "cpu", action_dim=2)
    pol = load_policy("qsft_robot.ros.fault_policies:FailingPolicy", "", "", "cpu", action_dim=2,
                      policy_args='{"fail_at": 2}')
    img = np.zeros((1, 1, 8, 8, 3), np.uint8)
    pol.act(img, ["drive to the red cone"])
    with pytest.raises(RuntimeError, match="injected"):
        pol.act(img, ["drive to the red cone"])


def test_late_bound_lets_a_command_stand_one_control_period_past_max_image_age():
    from qsft_robot.ros.params import late_bound, timing_warning

    assert late_bound(0.5, 5.0) == pytest.approx(0.7)
    w = Watchdog(max_image_age=0.5, late_age=late_bound(0.5, 5.0))
    # newest frame fresh; the last command came from a frame 0.6 s old: the next command is not overdue yet
    assert w.tick(10.0, 9.95, False, 9.4) == State.RUNNING
    assert w.tick(10.0, 9.95, False, 9.25) == State.LATE
    assert w.tick(10.0, 9.45, False, 9.4) == State.STALE  # the camera itself is silent: max_image_age only
    assert timing_warning(0.5, 5.0) is None
    assert "exceeds max_image_age" in timing_warning(0.5, 1.0)


def test_watchdog_keeps_a_bounded_history():
    w = Watchdog(max_image_age=0.5)
    for i in range(3 * Watchdog.MAX_TRANSITIONS):
        w.tick(float(i), float(i) if i % 2 else None, False)
    assert len(w.transitions) == Watchdog.MAX_TRANSITIONS


def test_old_stamps_are_warned_about():
    from qsft_robot.ros.inputs import old_stamp_warning

    assert old_stamp_warning(None, 0.5) is None and old_stamp_warning(4.9, 0.5) is None
    assert "10.0s in the past" in old_stamp_warning(10.0, 0.5)


def test_param_table_and_launch_values():
    from qsft_robot.ros.params import PARAM_SPECS, launch_value

    assert all(isinstance(d, str) and d for _, d in PARAM_SPECS.values())
    assert launch_value("control_hz", "10") == 10.0 and isinstance(launch_value("control_hz", "10"), float)
    assert launch_value("image_depth", "30") == 30 and launch_value("enable_actuation", "True") is True
    assert launch_value("instruction", "5") == "5"
    with pytest.raises(ValueError):
        launch_value("compressed", "yes")
