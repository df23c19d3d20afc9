"""MP4 encode/decode through PyAV (H.264, libx264, yuv420p): the codec upstream LeRobot reads."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, crf: int = 18) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height = w + (w % 2), h + (h % 2)
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "g": "2"}
        for f in frames:
            if f.shape[0] % 2 or f.shape[1] % 2:
                f = np.pad(f, ((0, f.shape[0] % 2), (0, f.shape[1] % 2), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_mp4(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """All frames (N, H, W, 3) uint8 and their timestamps in seconds."""
    frames, stamps = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            stamps.append(float(frame.pts * stream.time_base))
    return np.stack(frames), np.asarray(stamps)
