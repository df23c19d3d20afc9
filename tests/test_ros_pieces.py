"""The pure-Python parts of the ROS node, without rclpy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qsft_robot.ros.image_conv import ImageFormatError, compressed_to_rgb, image_to_rgb, rgb_to_image_fields
from qsft_robot.ros.profiles import RobotProfile
from qsft_robot.ros.safety import SafetyFilter, State, Watchdog

ROOT = Path(__file__).resolve().parents[1]


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
    f = SafetyFilter([-1, -1], [1, 1], max_rate=[2, 2])
    assert f([5, -5], now=0.0).tolist() == [1, -1]
    assert f([-1, 1], now=0.1).tolist() == pytest.approx([0.8, -0.8])
    assert f([np.nan, 0], now=0.2).tolist() == pytest.approx([0.6, -0.6])  # NaN -> 0, then slew-limited


def test_watchdog_states():
    w = Watchdog(max_image_age=0.5)
    assert w.tick(0.0, None, False) == State.WAITING
    assert w.tick(1.0, 0.9, False) == State.RUNNING
    assert w.tick(2.0, 0.9, False) == State.STALE
    assert w.tick(2.1, 2.05, False) == State.RUNNING
    assert w.tick(2.2, 2.15, True) == State.ESTOP
    assert w.tick(2.3, 2.25, False) == State.ESTOP  # latched
    w.reset_estop()
    assert w.tick(2.4, 2.35, False) == State.RUNNING


@pytest.mark.parametrize("name", ["arm", "base"])
def test_profiles_load_and_map(name):
    p = RobotProfile.load(ROOT / "configs" / "robots" / f"{name}.yaml")
    cmd = p.to_command(np.ones(len(p.scale)))
    assert np.allclose(cmd, p.upper)
    fields = p.command_fields(cmd)
    assert fields["type"] == ("twist" if name == "base" else "float64_multi_array")
    assert np.all(p.stop_command() == 0)
