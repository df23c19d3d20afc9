"""MP4 encode/decode through PyAV (H.264, libx264, yuv420p): the codec upstream LeRobot reads.

Reading is by timestamp range, never a whole file: LeRobot v3.0 packs hundreds of episodes into one
MP4, so a reader seeks to the keyframe before an episode's first frame and decodes only up to its last.
"""
from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

logger = logging.getLogger(__name__)


class VideoError(Exception):
    """A video file cannot give the frames asked for (corrupt, truncated, or no frame near a timestamp).
    `time` is where in the file it went wrong (seconds), when known."""

    def __init__(self, message: str, time: float | None = None):
        super().__init__(message)
        self.time = time


class Mp4Writer:
    """Appends frames to one MP4, episode after episode, so a writer never holds a whole file's frames.

    The index (moov atom) is put at the front of the file (faststart): a file cut short then still opens,
    and the episodes before the cut stay readable while the ones after it fail by name.
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 18):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.crf = fps, crf
        self.frames_written = 0
        self._container = av.open(str(self.path), mode="w", options={"movflags": "faststart"})
        self._stream = None

    @property
    def duration(self) -> float:
        """Seconds of video written so far: where the next frame will sit in the file."""
        return self.frames_written / self.fps

    def _open_stream(self, h: int, w: int):
        stream = self._container.add_stream("libx264", rate=int(round(self.fps)))
        stream.width, stream.height = w + (w % 2), h + (h % 2)
        stream.pix_fmt = "yuv420p"
        # a keyframe every second frame: a seek lands at most one frame before the one asked for
        stream.options = {"crf": str(self.crf), "g": "2"}
        return stream

    def add(self, frames: np.ndarray) -> None:
        """Encode (T, H, W, 3) uint8 RGB frames after the ones already written."""
        if self._stream is None:
            self._stream = self._open_stream(*frames.shape[1:3])
        for f in frames:
            if f.shape[0] % 2 or f.shape[1] % 2:
                f = np.pad(f, ((0, f.shape[0] % 2), (0, f.shape[1] % 2), (0, 0)), mode="edge")
            for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                self._container.mux(packet)
        self.frames_written += len(frames)

    def close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, crf: int = 18) -> None:
    with Mp4Writer(path, fps, crf) as w:
        w.add(frames)


class VideoReader:
    """Frames of one MP4 by timestamp, decoding only the range asked for.

    Reads that follow each other in the file (episode k, then k+1) continue decoding where the last one
    stopped; any other read seeks to a keyframe before its first timestamp. One RGB converter is kept for
    the whole file: PyAV's per-frame `to_ndarray(format="rgb24")` builds a new one per frame, which costs
    ten times the decoding itself at robot-camera sizes.
    """

    # a read starting at most this far after where the last one stopped decodes on instead of seeking
    continue_within_s = 1.0

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._container = av.open(str(self.path))
        except av.error.FFmpegError as e:
            raise VideoError(f"cannot open ({e})") from e
        if not self._container.streams.video:
            self._container.close()
            raise VideoError("no video stream")
        self._stream = self._container.streams.video[0]
        self._tb = float(self._stream.time_base)
        rate = self._stream.average_rate or self._stream.guessed_rate or 30
        self._frame_s = 1.0 / float(rate)
        self._rgb = VideoReformatter()
        self._frames = None          # the decoding generator in use; None: the next read seeks
        self._pending = None         # (time, frame) decoded past the last read's end: the next read's first
        self.last_time: float | None = None  # time of the last frame decoded

    def close(self) -> None:
        self._frames = self._pending = None
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _decode_from(self, t: float, needed_from: float):
        """(time, frame) from the keyframe at or before `t` on. Whatever the demuxer or decoder refuses is a
        VideoError that says where in the file it is, except a bad packet before `needed_from`: a seek lands
        a little early, and a neighbouring episode's damage is not this read's."""
        try:
            self._container.seek(max(0, int(t / self._tb)), stream=self._stream, backward=True, any_frame=False)
            packets = self._container.demux(self._stream)
        except av.error.FFmpegError as e:
            raise VideoError(f"cannot seek to t={t:.3f}s ({e})", t) from e
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as e:
                after = self.last_time or 0.0
                raise VideoError(f"unreadable video data after t={after:.3f}s ({e})", after + self._frame_s) from e
            try:
                frames = packet.decode()
            except av.error.FFmpegError as e:
                at = None if packet.pts is None else packet.pts * self._tb
                if at is not None and at < needed_from:
                    logger.debug("%s: skipped a bad packet at t=%.3fs before the frames asked for", self.path, at)
                    continue
                error = VideoError(f"corrupt video data{'' if at is None else f' at t={at:.3f}s'} ({e})", at)
                # frames the decoder still holds come before the bad packet (reordering delay): hand them
                # out first, so a read that ends before the bad packet gets all its frames
                yield from self._drain()
                raise error from e
            yield from self._timed(frames)

    def _timed(self, frames):
        for frame in frames:
            if frame.pts is not None:
                self.last_time = frame.pts * self._tb
                yield self.last_time, frame

    def _drain(self):
        try:
            frames = self._stream.codec_context.decode(None)
        except av.error.FFmpegError:
            return
        yield from self._timed(frames)

    def _start(self, t0: float, tol: float) -> None:
        """Seek so that decoding starts at or before t0. The demuxer seeks by decoding time, which runs ahead
        of presentation time by the decoder's delay, so the target starts two frames early and moves further
        back while the first frame still comes after t0."""
        margin = 2 * self._frame_s
        while True:
            target = max(0.0, t0 - margin)
            self._frames = self._decode_from(target, t0 - tol)
            self._pending = next(self._frames, None)
            if self._pending is None or self._pending[0] <= t0 + tol or target == 0.0:
                return
            margin *= 4

    def _continues(self, t0: float, tol: float) -> bool:
        return (self._frames is not None and self._pending is not None
                and t0 - self.continue_within_s <= self._pending[0] <= t0 + tol)

    def frames_at(self, stamps: np.ndarray, tolerance_s: float) -> np.ndarray:
        """(len(stamps), H, W, 3) uint8: for each timestamp, the frame nearest to it, which must lie within
        `tolerance_s`. Decodes from just before the first timestamp to the last, no further."""
        stamps = np.asarray(stamps, dtype=np.float64)
        order = np.argsort(stamps, kind="stable")
        t0, t1 = float(stamps[order[0]]), float(stamps[order[-1]])
        got_t, got, ended = [], [], False
        try:
            if not self._continues(t0, tolerance_s):
                self._start(t0, tolerance_s)
            while self._pending is not None or self._frames is not None:
                t, frame = self._pending if self._pending is not None else next(self._frames)
                self._pending = None
                if t > t1 + tolerance_s:
                    self._pending = (t, frame)
                    break
                if t >= t0 - tolerance_s:
                    got_t.append(t)
                    got.append(self._rgb.reformat(frame, format="rgb24").to_ndarray())
                if t >= t1:
                    break
        except StopIteration:
            self._frames, ended = None, True
        except VideoError as e:
            self._frames = self._pending = None
            # a bad packet after every frame asked for belongs to a later read, which will meet it again
            if not (e.time is not None and e.time > t1 + tolerance_s and got_t and got_t[-1] >= t1 - tolerance_s):
                raise
        out = self._nearest(np.asarray(got_t), got, stamps[order], tolerance_s, ended)
        return out[np.argsort(order)] if np.any(order != np.arange(len(order))) else out

    def _nearest(self, ts: np.ndarray, frames: list, stamps: np.ndarray, tol: float, ended: bool) -> np.ndarray:
        idx = np.clip(np.searchsorted(ts, stamps), 0, max(len(ts) - 1, 0))
        prev = np.clip(idx - 1, 0, None)
        if len(ts):
            idx = np.where(np.abs(ts[prev] - stamps) < np.abs(ts[idx] - stamps), prev, idx)
        err = np.abs(ts[idx] - stamps) if len(ts) else np.full(len(stamps), np.inf)
        if err.max() > tol:
            k = int(err.argmax())
            if ended and (not len(ts) or stamps[k] > ts[-1]):
                end = "" if self.last_time is None else f" at t={self.last_time:.4f}s"
                raise VideoError(f"no frame within tolerance {tol}s of t={stamps[k]:.4f}s: the video ends{end} "
                                 f"(a truncated file, or timestamps past its end)", float(stamps[k]))
            near = f"nearest {ts[idx[k]]:.4f}s" if len(ts) else "no frame decoded near it"
            raise VideoError(f"frame at t={stamps[k]:.4f}s not in the video within tolerance {tol}s ({near})",
                             float(stamps[k]))
        return np.stack([frames[i] for i in idx])
