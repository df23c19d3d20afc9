"""sensor_msgs/Image and CompressedImage payloads <-> HWC uint8 RGB arrays, without rclpy or cv_bridge.

cv_bridge is not among the ros-kilted wheels, and the conversion is a reshape plus a channel swap;
what matters is rejecting malformed messages with a reason, which is done here.
"""
from __future__ import annotations

import numpy as np

CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}


class ImageFormatError(ValueError):
    pass


def check_size(height: int, width: int, max_pixels: int | None) -> None:
    """Refuse frames larger than the node is configured for, before any copy: a 40 MP frame would
    otherwise cost a full copy and then the processor's resize on every tick."""
    if max_pixels is not None and height * width > max_pixels:
        raise ImageFormatError(f"image {width}x{height} ({height * width} px) exceeds max_image_pixels={max_pixels}"
                               " (raise the parameter or downscale in the camera driver)")


def image_to_rgb(encoding: str, height: int, width: int, step: int, data: bytes | np.ndarray,
                 max_pixels: int | None = None) -> np.ndarray:
    if encoding not in CHANNELS:
        raise ImageFormatError(f"unsupported encoding {encoding!r} (supported: {', '.join(CHANNELS)})")
    if height <= 0 or width <= 0:
        raise ImageFormatError(f"empty image {width}x{height}")
    check_size(height, width, max_pixels)
    ch = CHANNELS[encoding]
    if step < width * ch:
        raise ImageFormatError(f"step {step} < width*channels {width * ch} for {encoding}")
    buf = np.frombuffer(bytes(data) if not isinstance(data, np.ndarray) else data.tobytes(), dtype=np.uint8)
    if buf.size != step * height:
        raise ImageFormatError(f"data has {buf.size} bytes, expected step*height = {step * height}")
    img = buf.reshape(height, step)[:, : width * ch].reshape(height, width, ch)
    if encoding == "mono8":
        return np.repeat(img, 3, axis=2)
    if encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(img[..., 2::-1])
    return np.ascontiguousarray(img[..., :3])


def compressed_to_rgb(fmt: str, data: bytes | np.ndarray, max_pixels: int | None = None) -> np.ndarray:
    import cv2

    raw = np.frombuffer(bytes(data) if not isinstance(data, np.ndarray) else data.tobytes(), dtype=np.uint8)
    if raw.size == 0:
        raise ImageFormatError("empty compressed image")
    img = cv2.imdecode(raw, cv2.IMREAD_COLOR)
    if img is None:
        raise ImageFormatError(f"undecodable compressed image (format {fmt!r})")
    check_size(img.shape[0], img.shape[1], max_pixels)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def rgb_to_image_fields(img: np.ndarray, encoding: str = "rgb8") -> dict:
    """Fields for a sensor_msgs/Image (encoding, height, width, step, data)."""
    img = np.asarray(img, dtype=np.uint8)
    if encoding == "bgr8":
        img = img[..., ::-1]
    elif encoding == "mono8":
        img = img.mean(axis=2, keepdims=True).astype(np.uint8)
    elif encoding != "rgb8":
        raise ImageFormatError(f"cannot encode {encoding!r}")
    h, w, c = img.shape
    return {"encoding": encoding, "height": h, "width": w, "step": w * c, "data": np.ascontiguousarray(img).tobytes()}
