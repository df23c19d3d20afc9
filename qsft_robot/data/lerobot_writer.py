"""Write a local LeRobot codebase v3.0 dataset (reading: data/lerobot_reader.py).

Written from the documented upstream layout (meta/info.json with path templates, meta/tasks.parquet,
meta/episodes/ parquet, per-frame parquet under data/, H.264 MP4s per camera under videos/) so that
upstream `lerobot` loads what we write, without importing it (its torch pin differs from ours).

Episodes are written as they come (an iterable is enough), many to a file: each data parquet and each
camera's MP4 holds `episodes_per_file` episodes (all of them by default), and an episode is found in its
file through meta/episodes (`dataset_from_index`, `videos/<key>/from_timestamp`), as upstream does.
Memory stays at one file's frame table, one episode's frames and the statistics' running sums.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from qsft_robot.data.episode import DatasetError, Episode
from qsft_robot.data.video import Mp4Writer

CHUNK = "chunk-{chunk_index:03d}/file-{file_index:03d}"
CHUNKS_SIZE = 1000  # files per chunk folder, as upstream
SCALAR_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
                   "task_index": "int64", "next.reward": "float32", "next.done": "bool", "next.success": "bool"}
QUANTILES = (0.01, 0.10, 0.5, 0.9, 0.99)


def _stats(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(range(x.ndim - 1)) if x.ndim > 1 else (0,)
    q = {f"q{int(p * 100):02d}": np.quantile(x, p, axis=axes).tolist() for p in QUANTILES}
    return {"min": x.min(axes).tolist(), "max": x.max(axes).tolist(), "mean": x.mean(axes).tolist(),
            "std": x.std(axes).tolist(), "count": [int(x.shape[0])], **q}


def _histogram_stats(counts: np.ndarray) -> dict:
    """Per-channel statistics of uint8 pixels scaled to [0, 1] from their (channels, 256) value counts: the
    same numbers as over every pixel (quantiles interpolated as np.quantile does), without keeping them."""
    values = np.arange(256) / 255.0
    out: dict[str, list] = {k: [] for k in ("min", "max", "mean", "std", *(f"q{int(p * 100):02d}" for p in QUANTILES))}
    n = int(counts[0].sum())
    for c in counts:
        cum = np.cumsum(c)
        at = lambda k: values[np.searchsorted(cum, k, side="right")]  # noqa: E731  value of the k-th smallest
        nz = np.flatnonzero(c)
        mean = float((c * values).sum() / n)
        out["min"].append(float(values[nz[0]]))
        out["max"].append(float(values[nz[-1]]))
        out["mean"].append(mean)
        out["std"].append(float(np.sqrt((c * (values - mean) ** 2).sum() / n)))
        for p in QUANTILES:
            pos = p * (n - 1)
            lo, hi = at(int(np.floor(pos))), at(int(np.ceil(pos)))
            out[f"q{int(p * 100):02d}"].append(float(lo + (pos - np.floor(pos)) * (hi - lo)))
    return {**{k: [[[x]] for x in v] for k, v in out.items()}, "count": [n]}


def write_lerobot_v30(episodes: Iterable[Episode], root: str | Path, fps: float, robot_type: str = "qsft_sim",
                      crf: int = 18, episodes_per_file: int | None = None) -> Path:
    """Write a LeRobot v3.0 dataset; the folder appears only when complete (temp dir + rename).

    episodes_per_file: how many episodes share one data parquet and one MP4 per camera (None: all)."""
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"refusing to overwrite existing dataset folder {root}")
    if episodes_per_file is not None and episodes_per_file < 1:
        raise ValueError(f"episodes_per_file must be >= 1, got {episodes_per_file}")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        writer = _V30Writer(tmp, fps, crf, episodes_per_file)
        try:
            for i, ep in enumerate(episodes):
                writer.add(ep, f"episode {i}")
        finally:
            writer.close_file()
        if not writer.ep_rows:
            raise DatasetError(f"{root}: no episodes to write")
        writer.finish(robot_type)
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


class _V30Writer:
    """The open files of a v3.0 dataset being written and what meta/ will say about them."""

    def __init__(self, root: Path, fps: float, crf: int, episodes_per_file: int | None):
        self.root, self.fps, self.crf, self.per_file = root, fps, crf, episodes_per_file
        self.shapes: dict[str, tuple] = {}   # camera -> frame shape, from the first episode
        self.dims: tuple[int, int | None] | None = None  # (action dims, state dims or None), from the first
        self.tasks: dict[str, int] = {}
        self.ep_rows: list[dict] = []
        self.file_index = -1                   # files written so far - 1, over chunks
        self.in_file = 0                       # episodes in the current file
        self.tables: list[pa.Table] = []       # the current data file's rows, one table per episode
        self.videos: dict[str, Mp4Writer] = {}
        self.frames = 0
        self.sums: dict[str, list[np.ndarray]] = {"action": [], "observation.state": [], "next.reward": []}
        self.pixels: dict[str, np.ndarray] = {}

    @property
    def chunk_file(self) -> dict:
        return {"chunk_index": self.file_index // CHUNKS_SIZE, "file_index": self.file_index % CHUNKS_SIZE}

    @property
    def cams(self) -> list[str]:
        return sorted(self.shapes)

    def _check_like_first(self, ep: Episode, where: str) -> None:
        shapes = {cam: frames.shape[1:] for cam, frames in ep.images.items()}
        dims = (ep.actions.shape[1], None if ep.state is None else ep.state.shape[1])
        if self.dims is None:
            self.shapes, self.dims = shapes, dims
            self.pixels = {cam: np.zeros((3, 256), np.int64) for cam in self.cams}
        if shapes != self.shapes:
            raise DatasetError(f"{where}: cameras {shapes} differ from the first episode's {self.shapes}")
        if dims != self.dims:
            raise DatasetError(f"{where}: (action, state) dimensions {dims} differ from the first episode's "
                               f"{self.dims}")

    def add(self, ep: Episode, where: str) -> None:
        ep.validate(where)
        self._check_like_first(ep, where)
        if self.file_index < 0 or (self.per_file is not None and self.in_file >= self.per_file):
            self.close_file()
            self.file_index += 1
        e, T = len(self.ep_rows), len(ep)
        task = self.tasks.setdefault(ep.instruction, len(self.tasks))
        self.tables.append(self._frame_table(ep, e, task))
        cf = self.chunk_file
        row = {"episode_index": e, "tasks": [ep.instruction], "length": T,
               "data/chunk_index": cf["chunk_index"], "data/file_index": cf["file_index"],
               "dataset_from_index": self.frames, "dataset_to_index": self.frames + T,
               "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        for cam in self.cams:
            key = f"observation.images.{cam}"
            if cam not in self.videos:
                self.videos[cam] = Mp4Writer(self.root / "videos" / key / (CHUNK.format(**cf) + ".mp4"),
                                             self.fps, crf=self.crf)
            start = self.videos[cam].duration
            self.videos[cam].add(ep.images[cam])
            row.update({f"videos/{key}/chunk_index": cf["chunk_index"], f"videos/{key}/file_index": cf["file_index"],
                        f"videos/{key}/from_timestamp": start, f"videos/{key}/to_timestamp": start + T / self.fps})
            frames = ep.images[cam]
            for c in range(3):
                self.pixels[cam][c] += np.bincount(frames[..., c].ravel(), minlength=256)
        self.ep_rows.append(row)
        self.frames += T
        self.in_file += 1
        self.sums["action"].append(ep.actions.astype(np.float32))
        if ep.state is not None:
            self.sums["observation.state"].append(ep.state.astype(np.float32))
        self.sums["next.reward"].append(self.tables[-1].column("next.reward").to_numpy()[:, None])

    def _frame_table(self, ep: Episode, e: int, task: int) -> pa.Table:
        """The episode's rows of data/*.parquet."""
        T = len(ep)
        vectors = lambda x: pa.FixedSizeListArray.from_arrays(  # noqa: E731
            pa.array(np.asarray(x, np.float32).ravel()), x.shape[1]).cast(pa.list_(pa.float32()))
        cols = {"action": vectors(ep.actions)}
        if ep.state is not None:
            cols["observation.state"] = vectors(ep.state)
        rewards = ep.rewards if ep.rewards is not None else np.zeros(T, np.float32)
        last = np.arange(T) == T - 1
        scalars = {"timestamp": np.arange(T) / self.fps, "frame_index": np.arange(T), "episode_index": np.full(T, e),
                   "index": np.arange(self.frames, self.frames + T), "task_index": np.full(T, task),
                   "next.reward": rewards, "next.done": last, "next.success": last & bool(ep.success)}
        cols.update({k: pa.array(np.asarray(v).astype(SCALAR_FEATURES[k])) for k, v in scalars.items()})
        return pa.table(cols)

    def close_file(self) -> None:
        """Finish the current data parquet and MP4s (the next episode starts new ones)."""
        for video in self.videos.values():
            video.close()
        self.videos = {}
        if self.tables:
            path = self.root / "data" / (CHUNK.format(**self.chunk_file) + ".parquet")
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.concat_tables(self.tables), path)
        self.tables, self.in_file = [], 0

    def finish(self, robot_type: str) -> None:
        meta = self.root / "meta"
        (meta / "episodes" / "chunk-000").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(self.ep_rows), meta / "episodes" / "chunk-000" / "file-000.parquet")
        tasks = list(self.tasks)
        # upstream reads this with pandas and looks tasks up by the DataFrame index: write it that way
        pd.DataFrame({"task_index": list(range(len(tasks)))}, index=pd.Index(tasks, name="task")).to_parquet(
            meta / "tasks.parquet")
        n = len(self.ep_rows)
        info = {"codebase_version": "v3.0", "robot_type": robot_type, "total_episodes": n,
                "total_frames": self.frames, "total_tasks": len(tasks), "chunks_size": CHUNKS_SIZE,
                "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": self.fps,
                "splits": {"train": f"0:{n}"},
                "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
                "features": self._features()}
        (meta / "info.json").write_text(json.dumps(info, indent=2))
        stats = {k: _stats(np.concatenate(v)) for k, v in self.sums.items() if v}
        stats.update({f"observation.images.{cam}": _histogram_stats(c) for cam, c in self.pixels.items()})
        (meta / "stats.json").write_text(json.dumps(stats))

    def _features(self) -> dict:
        D, S = self.dims
        features = {"action": {"dtype": "float32", "shape": [D], "names": [f"a{i}" for i in range(D)]},
                    **{k: {"dtype": t, "shape": [1], "names": None} for k, t in SCALAR_FEATURES.items()}}
        if S is not None:
            features["observation.state"] = {"dtype": "float32", "shape": [S], "names": [f"s{i}" for i in range(S)]}
        for cam in self.cams:
            h, w = self.shapes[cam][:2]
            features[f"observation.images.{cam}"] = {
                "dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                "info": {"video.height": h, "video.width": w, "video.codec": "h264", "video.pix_fmt": "yuv420p",
                         "video.is_depth_map": False, "video.fps": self.fps, "video.channels": 3,
                         "has_audio": False}}
        return features
