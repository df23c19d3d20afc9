"""Read a local LeRobot dataset, codebase v2.1 or v3.0 (writing: data/lerobot_writer.py).

Written from the documented upstream layout (meta/info.json path templates, tasks, episodes
metadata, per-frame parquet, MP4 per camera or image bytes in the parquet) so that we load what
upstream `lerobot` writes without importing it (it needs Python >= 3.12; see data/lerobot_adapter.py).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qsft_robot.data.episode import DatasetError, Episode
from qsft_robot.data.video import read_mp4

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


def _read_parquet(path: Path) -> pa.Table:
    if not path.is_file():
        raise DatasetError(f"{path}: missing data file")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(f"{path}: unreadable parquet ({e})") from e


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
            rows += _read_parquet(f).to_pylist()
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


class _VideoCache:
    """Decodes each MP4 once per read (v3.0 packs many episodes into one file), keeping at most
    `max_files` decoded files (one per camera) so memory stays bounded on large datasets."""

    def __init__(self, max_files: int = 1):
        from collections import OrderedDict

        self.cache: OrderedDict[Path, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.max_files = max(1, max_files)

    def frames_at(self, path: Path, stamps: np.ndarray, tol: float, where: str) -> np.ndarray:
        if path in self.cache:
            self.cache.move_to_end(path)
        else:
            while len(self.cache) >= self.max_files:
                self.cache.popitem(last=False)
            if not path.is_file():
                raise DatasetError(f"{where}: missing video file {path}")
            try:
                self.cache[path] = read_mp4(path)
            except Exception as e:  # PyAV raises several error types for corrupt files
                raise DatasetError(f"{where}: unreadable video {path} ({e})") from e
        frames, ts = self.cache[path]
        idx = np.clip(np.searchsorted(ts, stamps), 0, len(ts) - 1)
        prev = np.clip(idx - 1, 0, len(ts) - 1)
        idx = np.where(np.abs(ts[prev] - stamps) < np.abs(ts[idx] - stamps), prev, idx)
        err = np.abs(ts[idx] - stamps)
        if err.max() > tol:
            k = int(err.argmax())
            raise DatasetError(f"{where}: frame at t={stamps[k]:.4f}s not in {path} within tolerance "
                               f"{tol}s (nearest {ts[idx[k]]:.4f}s)")
        return frames[idx]


def read_lerobot(root: str | Path, tolerance_s: float = 1e-3, cameras: list[str] | None = None,
                 drop_nonfinite: bool = False) -> tuple[list[Episode], dict]:
    """All episodes of a local LeRobot v2.1/v3.0 dataset, images decoded, as Episode objects."""
    root = Path(root)
    info = read_info(root)
    episodes = list(iter_lerobot(root, tolerance_s, cameras, drop_nonfinite))
    logger.info("read %d episodes (%s) from %s", len(episodes), info["codebase_version"], root)
    return episodes, info


def iter_lerobot(root: str | Path, tolerance_s: float = 1e-3, cameras: list[str] | None = None,
                 drop_nonfinite: bool = False, images: bool = True):
    """Episodes one at a time (bounded memory: one video file decoded at a time per camera).

    images=False skips decoding entirely: a cheap first pass for action statistics and labels.
    """
    reader = _Reader(Path(root), tolerance_s, cameras)
    for em in _episodes_meta(reader.root, reader.info):
        yield reader.episode(em, images, drop_nonfinite)


class _Reader:
    """One dataset's metadata, the parquet table in use and the decoded videos, episode after episode."""

    def __init__(self, root: Path, tolerance_s: float, cameras: list[str] | None):
        self.root, self.tolerance_s = root, tolerance_s
        self.info = info = read_info(root)
        self.version, self.feats = info["codebase_version"], info["features"]
        cam_keys = [k for k, f in self.feats.items()
                    if k.startswith("observation.image") and f["dtype"] in ("video", "image")]
        if cameras:
            missing = [c for c in cameras if f"observation.images.{c}" not in cam_keys]
            if missing:
                raise DatasetError(f"{root}: cameras {missing} not in dataset (has {cam_keys})")
            cam_keys = [f"observation.images.{c}" for c in cameras]
        if "action" not in self.feats:
            raise DatasetError(f"{root / 'meta/info.json'}: no 'action' feature")
        self.cam_keys = cam_keys
        self.tasks = _tasks(root, info)
        self.videos = _VideoCache(max_files=len(cam_keys))
        self.tables: dict[Path, pa.Table] = {}

    def _rows(self, em: dict, where: str) -> pa.Table:
        e, info = em["episode_index"], self.info
        if self.version == "v3.0":
            path = self.root / info["data_path"].format(chunk_index=em["data/chunk_index"],
                                                        file_index=em["data/file_index"])
        else:
            chunk = e // info.get("chunks_size", 1000)
            path = self.root / info["data_path"].format(episode_chunk=chunk, episode_index=e)
        if path not in self.tables:
            self.tables.clear()  # files are visited in order: keep one parquet table in memory
            self.tables[path] = _read_parquet(path)
        t = self.tables[path]
        ep_col = np.asarray(t.column("episode_index").to_numpy())
        rows = t.filter(pa.array(ep_col == e)) if self.version == "v3.0" else t
        if rows.num_rows == 0:
            raise DatasetError(f"{where}: empty episode (no frames in {path})")
        if rows.num_rows != em.get("length", rows.num_rows):
            raise DatasetError(f"{where}: metadata says {em['length']} frames, {path} has {rows.num_rows}")
        return rows

    def _camera(self, key: str, em: dict, rows: pa.Table, order: np.ndarray, ts: np.ndarray,
                where: str) -> np.ndarray:
        if self.feats[key]["dtype"] != "video":  # image bytes in the parquet
            cells = rows.column(key).to_pylist()
            return np.stack([_decode_image_cell(cells[i], where) for i in order])
        e = em["episode_index"]
        if self.version == "v3.0":
            vpath = self.root / self.info["video_path"].format(
                video_key=key, chunk_index=em[f"videos/{key}/chunk_index"], file_index=em[f"videos/{key}/file_index"])
            stamps = ts + em[f"videos/{key}/from_timestamp"]
        else:
            chunk = e // self.info.get("chunks_size", 1000)
            vpath = self.root / self.info["video_path"].format(episode_chunk=chunk, video_key=key, episode_index=e)
            stamps = ts
        return self.videos.frames_at(vpath, stamps, self.tolerance_s, where)

    def episode(self, em: dict, images: bool, drop_nonfinite: bool) -> Episode:
        from qsft_robot.data.episode import drop_nonfinite_frames

        e = em["episode_index"]
        where = f"{self.root} episode {e}"
        rows = self._rows(em, where)
        order = np.argsort(rows.column("frame_index").to_numpy())
        col = lambda name: np.asarray(rows.column(name).to_pylist(), dtype=np.float32)[order]  # noqa: E731
        actions = col("action")
        if actions.ndim == 1:
            actions = actions[:, None]
        state = col("observation.state") if "observation.state" in rows.column_names else None
        ts = np.asarray(rows.column("timestamp").to_numpy(), dtype=np.float64)[order]
        images_out = {key.split(".")[-1]: self._camera(key, em, rows, order, ts, where)
                      for key in (self.cam_keys if images else [])}
        rewards = col("next.reward") if "next.reward" in rows.column_names else None
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
