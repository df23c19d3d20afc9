"""LeRobot datasets from a local folder: read codebase v2.1 and v3.0, write v3.0.

Written from the documented upstream layout (meta/info.json path templates, tasks, episodes
metadata, per-frame parquet, MP4 per camera) so that upstream `lerobot` loads what we write and we
load what it writes, without importing it (it needs Python >= 3.12; see data/lerobot_adapter.py).
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from qsft_robot.data.episode import DatasetError, Episode
from qsft_robot.data.video import read_mp4, write_mp4

logger = logging.getLogger(__name__)
SUPPORTED = ("v2.1", "v3.0")
CHUNK = "chunk-{chunk_index:03d}/file-{file_index:03d}"


# ---------------------------------------------------------------------------------------------
# writing (v3.0)
# ---------------------------------------------------------------------------------------------
def _stats(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(range(x.ndim - 1)) if x.ndim > 1 else (0,)
    q = {f"q{int(p * 100):02d}": np.quantile(x, p, axis=axes).tolist() for p in (0.01, 0.10, 0.5, 0.9, 0.99)}
    return {"min": x.min(axes).tolist(), "max": x.max(axes).tolist(), "mean": x.mean(axes).tolist(),
            "std": x.std(axes).tolist(), "count": [int(x.shape[0])], **q}


def write_lerobot_v30(episodes: list[Episode], root: str | Path, fps: float, robot_type: str = "qsft_sim",
                      crf: int = 18) -> Path:
    """Write a LeRobot v3.0 dataset; the folder appears only when complete (temp dir + rename)."""
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"refusing to overwrite existing dataset folder {root}")
    if not episodes:
        raise DatasetError(f"{root}: no episodes to write")
    for i, ep in enumerate(episodes):
        ep.validate(f"episode {i}")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write_v30(episodes, tmp, fps, robot_type, crf)
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _write_v30(episodes, root: Path, fps, robot_type, crf):
    cams = sorted(episodes[0].images)
    tasks = sorted({ep.instruction for ep in episodes})
    task_index = {t: i for i, t in enumerate(tasks)}
    D = episodes[0].actions.shape[1]
    has_state = episodes[0].state is not None
    columns: dict[str, list] = {k: [] for k in ("action", "observation.state", "timestamp", "frame_index",
                                                 "episode_index", "index", "task_index", "next.reward",
                                                 "next.done", "next.success")}
    ep_rows, start, t_offset = [], 0, 0.0
    for e, ep in enumerate(episodes):
        T = len(ep)
        rewards = ep.rewards if ep.rewards is not None else np.zeros(T, np.float32)
        columns["action"] += list(ep.actions.astype(np.float32))
        if has_state:
            columns["observation.state"] += list(ep.state.astype(np.float32))
        columns["timestamp"] += (np.arange(T) / fps).astype(np.float32).tolist()
        columns["frame_index"] += list(range(T))
        columns["episode_index"] += [e] * T
        columns["index"] += list(range(start, start + T))
        columns["task_index"] += [task_index[ep.instruction]] * T
        columns["next.reward"] += rewards.astype(np.float32).tolist()
        columns["next.done"] += [False] * (T - 1) + [True]
        columns["next.success"] += [False] * (T - 1) + [bool(ep.success)]
        row = {"episode_index": e, "tasks": [ep.instruction], "length": T,
               "data/chunk_index": 0, "data/file_index": 0,
               "dataset_from_index": start, "dataset_to_index": start + T,
               "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        for cam in cams:
            key = f"observation.images.{cam}"
            row[f"videos/{key}/chunk_index"] = 0
            row[f"videos/{key}/file_index"] = 0
            row[f"videos/{key}/from_timestamp"] = t_offset
            row[f"videos/{key}/to_timestamp"] = t_offset + T / fps
        ep_rows.append(row)
        start += T
        t_offset += T / fps
    if not has_state:
        del columns["observation.state"]
    table = pa.table({k: (pa.array([np.asarray(v).tolist() for v in vals], type=pa.list_(pa.float32()))
                          if k in ("action", "observation.state") else pa.array(vals))
                      for k, vals in columns.items()})
    data_file = root / "data" / (CHUNK.format(chunk_index=0, file_index=0) + ".parquet")
    data_file.parent.mkdir(parents=True)
    pq.write_table(table, data_file)
    for cam in cams:
        frames = np.concatenate([ep.images[cam] for ep in episodes])
        write_mp4(root / "videos" / f"observation.images.{cam}" / (CHUNK.format(chunk_index=0, file_index=0) + ".mp4"),
                  frames, fps, crf=crf)
    meta = root / "meta"
    (meta / "episodes" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ep_rows), meta / "episodes" / "chunk-000" / "file-000.parquet")
    # upstream reads this with pandas and looks tasks up by the DataFrame index: write it that way
    pd.DataFrame({"task_index": list(range(len(tasks)))}, index=pd.Index(tasks, name="task")).to_parquet(
        meta / "tasks.parquet")
    features = {
        "action": {"dtype": "float32", "shape": [D], "names": [f"a{i}" for i in range(D)]},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
        "next.success": {"dtype": "bool", "shape": [1], "names": None},
    }
    if has_state:
        S = episodes[0].state.shape[1]
        features["observation.state"] = {"dtype": "float32", "shape": [S], "names": [f"s{i}" for i in range(S)]}
    for cam in cams:
        h, w = episodes[0].images[cam].shape[1:3]
        features[f"observation.images.{cam}"] = {
            "dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
            "info": {"video.height": h, "video.width": w, "video.codec": "h264", "video.pix_fmt": "yuv420p",
                     "video.is_depth_map": False, "video.fps": fps, "video.channels": 3, "has_audio": False}}
    info = {"codebase_version": "v3.0", "robot_type": robot_type, "total_episodes": len(episodes),
            "total_frames": start, "total_tasks": len(tasks), "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": fps,
            "splits": {"train": f"0:{len(episodes)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": features}
    (meta / "info.json").write_text(json.dumps(info, indent=2))
    stats = {"action": _stats(table.column("action").to_pylist())}
    if has_state:
        stats["observation.state"] = _stats(table.column("observation.state").to_pylist())
    stats["next.reward"] = _stats(np.asarray(columns["next.reward"])[:, None])
    for cam in cams:
        imgs = np.concatenate([ep.images[cam] for ep in episodes]).astype(np.float32) / 255.0
        s = _stats(imgs.reshape(-1, 3))
        stats[f"observation.images.{cam}"] = {k: [[[x]] for x in v] if k != "count" else v for k, v in s.items()}
    (meta / "stats.json").write_text(json.dumps(stats))


# ---------------------------------------------------------------------------------------------
# reading (v2.1, v3.0)
# ---------------------------------------------------------------------------------------------
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
    from qsft_robot.data.episode import drop_nonfinite_frames

    root = Path(root)
    info = read_info(root)
    version = info["codebase_version"]
    feats = info["features"]
    cam_keys = [k for k, f in feats.items() if k.startswith("observation.image") and f["dtype"] in ("video", "image")]
    if cameras:
        missing = [c for c in cameras if f"observation.images.{c}" not in cam_keys]
        if missing:
            raise DatasetError(f"{root}: cameras {missing} not in dataset (has {cam_keys})")
        cam_keys = [f"observation.images.{c}" for c in cameras]
    if "action" not in feats:
        raise DatasetError(f"{root / 'meta/info.json'}: no 'action' feature")
    tasks = _tasks(root, info)
    videos = _VideoCache(max_files=len(cam_keys))
    tables: dict[Path, pa.Table] = {}
    for em in _episodes_meta(root, info):
        e = em["episode_index"]
        where = f"{root} episode {e}"
        if version == "v3.0":
            path = root / info["data_path"].format(chunk_index=em["data/chunk_index"], file_index=em["data/file_index"])
        else:
            chunk = e // info.get("chunks_size", 1000)
            path = root / info["data_path"].format(episode_chunk=chunk, episode_index=e)
        if path not in tables:
            tables.clear()  # files are visited in order: keep one parquet table in memory
            tables[path] = _read_parquet(path)
        t = tables[path]
        ep_col = np.asarray(t.column("episode_index").to_numpy())
        rows = t.filter(pa.array(ep_col == e)) if version == "v3.0" else t
        if rows.num_rows == 0:
            raise DatasetError(f"{where}: empty episode (no frames in {path})")
        if rows.num_rows != em.get("length", rows.num_rows):
            raise DatasetError(f"{where}: metadata says {em['length']} frames, {path} has {rows.num_rows}")
        order = np.argsort(rows.column("frame_index").to_numpy())
        col = lambda name: np.asarray(rows.column(name).to_pylist(), dtype=np.float32)[order]  # noqa: E731
        actions = col("action")
        if actions.ndim == 1:
            actions = actions[:, None]
        state = col("observation.state") if "observation.state" in rows.column_names else None
        ts = np.asarray(rows.column("timestamp").to_numpy(), dtype=np.float64)[order]
        images_out = {}
        for key in cam_keys if images else []:
            cam = key.split(".")[-1]
            if feats[key]["dtype"] == "video":
                if version == "v3.0":
                    vpath = root / info["video_path"].format(video_key=key, chunk_index=em[f"videos/{key}/chunk_index"],
                                                             file_index=em[f"videos/{key}/file_index"])
                    stamps = ts + em[f"videos/{key}/from_timestamp"]
                else:
                    chunk = e // info.get("chunks_size", 1000)
                    vpath = root / info["video_path"].format(episode_chunk=chunk, video_key=key, episode_index=e)
                    stamps = ts
                images_out[cam] = videos.frames_at(vpath, stamps, tolerance_s, where)
            else:
                cells = rows.column(key).to_pylist()
                images_out[cam] = np.stack([_decode_image_cell(cells[i], where) for i in order])
        rewards = col("next.reward") if "next.reward" in rows.column_names else None
        success_col = rows.column("next.success").to_pylist() if "next.success" in rows.column_names else None
        task_idx = int(rows.column("task_index")[0].as_py()) if "task_index" in rows.column_names else 0
        instruction = tasks.get(task_idx) or (em.get("tasks") or [""])[0]
        ep = Episode(images=images_out, actions=actions, instruction=instruction, state=state, rewards=rewards,
                     success=bool(any(success_col)) if success_col is not None else False,
                     meta={"episode_index": e, "has_success": success_col is not None,
                           "has_reward": rewards is not None})
        ep.terminated = ep.success
        if drop_nonfinite:
            ep = drop_nonfinite_frames(ep, where, logger)
        ep.validate(where)
        yield ep
