"""Read a local LeRobot dataset, codebase v2.1 or v3.0 (writing: data/lerobot_writer.py).

Written from the documented upstream layout (meta/info.json path templates, tasks, episodes
metadata, per-frame parquet, MP4 per camera or image bytes in the parquet) so that we load what
upstream `lerobot` writes without importing it (its torch pin differs from ours; see data/lerobot_adapter.py).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qsft_robot.data.episode import DatasetError, Episode
from qsft_robot.data.video import VideoError, VideoReader

logger = logging.getLogger(__name__)
SUPPORTED = ("v2.1", "v3.0")


def action_names(info: dict) -> list[str] | None:
    """The dataset's names of the action dims (features.action.names: a list, or in older datasets a dict
    holding one list such as {"motors": [...]}), or None when it has none or they do not fit the shape."""
    feat = info.get("features", {}).get("action", {})
    names = feat.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    shape = feat.get("shape") or [None]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) != shape[-1]:
        return None
    return names


def read_info(root: Path) -> dict:
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise DatasetError(f"{path}: missing; not a LeRobot dataset folder")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from e
    version = info.get("codebase_version")
    if version not in SUPPORTED:
        raise DatasetError(f"{path}: unsupported codebase_version {version!r} (supported: {', '.join(SUPPORTED)})")
    return info


def _parquet(path: Path, read):
    """read(path) of a parquet file, its failures as DatasetError naming the file."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing data file")
    try:
        return read(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(f"{path}: unreadable parquet ({e})") from e


def _schema(path: Path) -> pa.Schema:
    return _parquet(path, pq.read_schema)


def _read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    return _parquet(path, lambda p: pq.read_table(p, columns=columns))


def _tasks(root: Path, info: dict) -> dict[int, str]:
    if info["codebase_version"] == "v3.0":
        t = _read_parquet(root / "meta" / "tasks.parquet")
        cols = t.column_names
        # pandas writes the task-string index as a column named 'task' or '__index_level_0__'
        name_col = next((c for c in ("task", "__index_level_0__") if c in cols),
                        next((c for c in cols if c != "task_index"), None))
        if name_col is None:
            raise DatasetError(f"{root / 'meta' / 'tasks.parquet'}: no task text column")
        return dict(zip(t.column("task_index").to_pylist(), t.column(name_col).to_pylist()))
    out = {}
    for line in (root / "meta" / "tasks.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["task_index"]] = row["task"]
    return out


def _episodes_meta(root: Path, info: dict) -> list[dict]:
    if info["codebase_version"] == "v3.0":
        files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetError(f"{root / 'meta' / 'episodes'}: no episode metadata parquet files")
        rows = []
        for f in files:
            # per-episode statistics (upstream's stats/* columns) are the bulk of these files and unused here
            rows += _read_parquet(f, [c for c in _schema(f).names if not c.startswith("stats/")]).to_pylist()
        return sorted(rows, key=lambda r: r["episode_index"])
    path = root / "meta" / "episodes.jsonl"
    if not path.is_file():
        raise DatasetError(f"{path}: missing")
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _decode_image_cell(cell, where: str) -> np.ndarray:
    import cv2

    raw = cell["bytes"] if isinstance(cell, dict) else cell
    arr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR) if raw else None
    if arr is None:
        raise DatasetError(f"{where}: undecodable image bytes")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


class _VideoFiles:
    """One open VideoReader per camera. v3.0 packs many episodes into one MP4: episodes read in order keep
    decoding on in the same open file, and a camera's file is closed when its next episode is in another."""

    def __init__(self):
        self.open: dict[str, VideoReader] = {}

    def frames_at(self, key: str, path: Path, stamps: np.ndarray, tol: float, where: str) -> np.ndarray:
        reader = self.open.get(key)
        if reader is None or reader.path != path:
            self.close(key)
            if not path.is_file():
                raise DatasetError(f"{where}: missing video file {path}")
            try:
                reader = self.open[key] = VideoReader(path)
            except VideoError as e:
                raise DatasetError(f"{where}: unreadable video {path} ({e})") from e
        try:
            return reader.frames_at(stamps, tol)
        except VideoError as e:
            self.close(key)  # the next episode starts from a fresh seek
            raise DatasetError(f"{where}: unreadable video {path}: {e}") from e

    def close(self, key: str | None = None) -> None:
        for k in [key] if key is not None else list(self.open):
            reader = self.open.pop(k, None)
            if reader is not None:
                reader.close()


def read_lerobot(root: str | Path, tolerance_s: float = 1e-3, cameras: list[str] | None = None,
                 drop_nonfinite: bool = False) -> tuple[list[Episode], dict]:
    """All episodes of a local LeRobot v2.1/v3.0 dataset, images decoded, as Episode objects."""
    root = Path(root)
    info = read_info(root)
    episodes = list(iter_lerobot(root, tolerance_s, cameras, drop_nonfinite))
    logger.info("read %d episodes (%s) from %s", len(episodes), info["codebase_version"], root)
    return episodes, info


def iter_lerobot(root: str | Path, tolerance_s: float = 1e-3, cameras: list[str] | None = None,
                 drop_nonfinite: bool = False, images: bool = True) -> Iterator[Episode]:
    """Episodes one at a time (bounded memory: one episode's frames, one data file's table).

    images=False skips decoding entirely: a cheap first pass for action statistics and labels.
    """
    reader = LeRobotReader(root, tolerance_s, cameras)
    try:
        for em in reader.metas:
            yield reader.episode(em, images, drop_nonfinite)
    finally:
        reader.close()


def _hwc(feature: dict, where: str) -> tuple[int, int, int]:
    """(height, width, channels) of an image feature from info.json; older datasets store [3, H, W] and say so
    in `names`."""
    shape, names = list(feature.get("shape") or []), feature.get("names")
    if len(shape) != 3:
        raise DatasetError(f"{where}: image shape {shape} is not 3-D")
    if isinstance(names, list) and len(names) == 3:
        axis = {str(n).rstrip("s"): i for i, n in enumerate(names)}
        if {"height", "width", "channel"} <= set(axis):
            return shape[axis["height"]], shape[axis["width"]], shape[axis["channel"]]
    if shape[-1] not in (1, 3, 4) and shape[0] in (1, 3, 4):
        return shape[1], shape[2], shape[0]
    return shape[0], shape[1], shape[2]


def _floats(rows: pa.Table, name: str, order: np.ndarray) -> np.ndarray:
    """A numeric or fixed-length list column as float32, (T,) or (T, D), in frame order."""
    col = rows.column(name).combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if len(lengths) and lengths.min() == lengths.max():
            flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
            return flat.astype(np.float32).reshape(len(col), -1)[order]
    return np.asarray(col.to_pylist(), dtype=np.float32)[order]


class LeRobotReader:
    """One dataset's metadata, the data table in use and the open videos, read episode after episode.

    Nothing here holds more than one data file's table and one episode's (or one chunk's) frames, so a
    dataset's size is bounded by disk, not RAM. Video is opened only when frames are asked for.
    """

    def __init__(self, root: str | Path, tolerance_s: float = 1e-3, cameras: list[str] | None = None):
        self.root, self.tolerance_s = Path(root), tolerance_s
        self.info = info = read_info(self.root)
        self.version, self.feats = info["codebase_version"], info["features"]
        cam_keys = [k for k, f in self.feats.items()
                    if k.startswith("observation.image") and f["dtype"] in ("video", "image")]
        if cameras:
            missing = [c for c in cameras if f"observation.images.{c}" not in cam_keys]
            if missing:
                raise DatasetError(f"{self.root}: cameras {missing} not in dataset (has {cam_keys})")
            cam_keys = [f"observation.images.{c}" for c in cameras]
        if "action" not in self.feats:
            raise DatasetError(f"{self.root / 'meta/info.json'}: no 'action' feature")
        self.cam_keys = cam_keys
        self.tasks = _tasks(self.root, info)
        self.videos = _VideoFiles()
        self._table: tuple[tuple[Path, bool], pa.Table, dict[int, np.ndarray]] | None = None
        self._metas: list[dict] | None = None

    @property
    def metas(self) -> list[dict]:
        """Every episode's metadata row, by episode index."""
        if self._metas is None:
            self._metas = _episodes_meta(self.root, self.info)
        return self._metas

    def camera_shapes(self) -> dict[str, tuple[int, int, int]]:
        """Camera name -> (H, W, 3) as info.json declares it: no video is opened."""
        return {key.split(".")[-1]: _hwc(self.feats[key], f"{self.root / 'meta/info.json'} {key}")
                for key in self.cam_keys}

    def close(self) -> None:
        self.videos.close()
        self._table = None

    def _data_path(self, em: dict) -> Path:
        if self.version == "v3.0":
            return self.root / self.info["data_path"].format(chunk_index=em["data/chunk_index"],
                                                             file_index=em["data/file_index"])
        chunk = em["episode_index"] // self.info.get("chunks_size", 1000)
        return self.root / self.info["data_path"].format(episode_chunk=chunk, episode_index=em["episode_index"])

    def _rows(self, em: dict, where: str, images: bool) -> pa.Table:
        """The episode's rows of its data file; without images, image-bytes columns are not read."""
        e, path = em["episode_index"], self._data_path(em)
        if self._table is None or self._table[0] != (path, images):
            # files are visited in order: one table in memory, indexed by episode once
            self._table = None
            skip = set() if images else {k for k, f in self.feats.items() if f["dtype"] == "image"}
            t = _read_parquet(path, None if not skip else [c for c in _schema(path).names if c not in skip])
            ep_col = np.asarray(t.column("episode_index").to_numpy()) if self.version == "v3.0" else None
            rows_of = {}
            if ep_col is not None:
                order = np.argsort(ep_col, kind="stable")
                uniq, first = np.unique(ep_col[order], return_index=True)
                rows_of = dict(zip(uniq.tolist(), np.split(order, first[1:])))
            self._table = ((path, images), t, rows_of)
        _, t, rows_of = self._table
        rows = t.take(rows_of.get(e, np.zeros(0, np.int64))) if self.version == "v3.0" else t
        if rows.num_rows == 0:
            raise DatasetError(f"{where}: empty episode (no frames in {path})")
        if rows.num_rows != em.get("length", rows.num_rows):
            raise DatasetError(f"{where}: metadata says {em['length']} frames, {path} has {rows.num_rows}")
        return rows

    def _camera(self, key: str, em: dict, rows: pa.Table, order: np.ndarray, ts: np.ndarray,
                where: str) -> np.ndarray:
        """Frames of rows `order` (timestamps `ts` within the episode) of one camera."""
        if self.feats[key]["dtype"] != "video":  # image bytes in the parquet
            cells = rows.column(key).take(pa.array(order)).to_pylist()
            return np.stack([_decode_image_cell(cell, where) for cell in cells])
        e = em["episode_index"]
        if self.version == "v3.0":
            vpath = self.root / self.info["video_path"].format(
                video_key=key, chunk_index=em[f"videos/{key}/chunk_index"], file_index=em[f"videos/{key}/file_index"])
            stamps = ts + em[f"videos/{key}/from_timestamp"]
        else:
            chunk = e // self.info.get("chunks_size", 1000)
            vpath = self.root / self.info["video_path"].format(episode_chunk=chunk, video_key=key, episode_index=e)
            stamps = ts
        return self.videos.frames_at(key, vpath, stamps, self.tolerance_s, where)

    def _frames(self, em: dict, images: bool) -> tuple[pa.Table, np.ndarray, np.ndarray, str]:
        """The episode's rows, their order by frame index, their timestamps in that order, and its name."""
        where = f"{self.root} episode {em['episode_index']}"
        rows = self._rows(em, where, images)
        order = np.argsort(rows.column("frame_index").to_numpy(), kind="stable")
        ts = np.asarray(rows.column("timestamp").to_numpy(), dtype=np.float64)[order]
        return rows, order, ts, where

    def episode(self, em: dict, images: bool = True, drop_nonfinite: bool = False) -> Episode:
        from qsft_robot.data.episode import drop_nonfinite_frames

        e = em["episode_index"]
        rows, order, ts, where = self._frames(em, images)
        actions = _floats(rows, "action", order)
        if actions.ndim == 1:
            actions = actions[:, None]
        state = _floats(rows, "observation.state", order) if "observation.state" in rows.column_names else None
        images_out = {key.split(".")[-1]: self._camera(key, em, rows, order, ts, where)
                      for key in (self.cam_keys if images else [])}
        rewards = _floats(rows, "next.reward", order) if "next.reward" in rows.column_names else None
        success_col = rows.column("next.success").to_pylist() if "next.success" in rows.column_names else None
        task_idx = int(rows.column("task_index")[0].as_py()) if "task_index" in rows.column_names else 0
        instruction = self.tasks.get(task_idx) or (em.get("tasks") or [""])[0]
        ep = Episode(images=images_out, actions=actions, instruction=instruction, state=state, rewards=rewards,
                     success=bool(any(success_col)) if success_col is not None else False,
                     meta={"episode_index": e, "has_success": success_col is not None,
                           "action_names": action_names(self.info),
                           "has_reward": rewards is not None})
        ep.terminated = ep.success
        if drop_nonfinite:
            ep = drop_nonfinite_frames(ep, where, logger)
        ep.validate(where)
        return ep

    def frame_chunks(self, em: dict, chunk_frames: int = 256, drop_nonfinite: bool = False) -> Iterator[np.ndarray]:
        """The episode's frames as (n <= chunk_frames, cameras, H, W, 3) uint8 blocks in frame order, cameras in
        the reader's order: what a frame cache writes, never a whole long episode in memory. With
        drop_nonfinite the frames that `episode(drop_nonfinite=True)` drops are left out here too."""
        rows, order, ts, where = self._frames(em, True)
        if drop_nonfinite:
            keep = np.isfinite(_floats(rows, "action", order).reshape(len(order), -1)).all(1)
            order, ts = order[keep], ts[keep]
        for s in range(0, len(order), chunk_frames):
            part = slice(s, s + chunk_frames)
            yield np.stack([self._camera(key, em, rows, order[part], ts[part], where) for key in self.cam_keys], 1)
