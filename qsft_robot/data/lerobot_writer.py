"""Write a local LeRobot codebase v3.0 dataset (reading: data/lerobot_reader.py).

Written from the documented upstream layout (meta/info.json with path templates, meta/tasks.parquet,
meta/episodes/ parquet, per-frame parquet under data/, one H.264 MP4 per camera under videos/) so that
upstream `lerobot` loads what we write, without importing it (it needs Python >= 3.12).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from qsft_robot.data.episode import DatasetError, Episode
from qsft_robot.data.video import write_mp4

CHUNK = "chunk-{chunk_index:03d}/file-{file_index:03d}"
FRAME_COLUMNS = ("action", "observation.state", "timestamp", "frame_index", "episode_index", "index", "task_index",
                 "next.reward", "next.done", "next.success")
SCALAR_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
                   "task_index": "int64", "next.reward": "float32", "next.done": "bool", "next.success": "bool"}


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


def _write_v30(episodes: list[Episode], root: Path, fps: float, robot_type: str, crf: int) -> None:
    cams = sorted(episodes[0].images)
    tasks = sorted({ep.instruction for ep in episodes})
    columns, ep_rows = _frame_columns(episodes, cams, {t: i for i, t in enumerate(tasks)}, fps)
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
    info = {"codebase_version": "v3.0", "robot_type": robot_type, "total_episodes": len(episodes),
            "total_frames": len(columns["index"]), "total_tasks": len(tasks), "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": fps,
            "splits": {"train": f"0:{len(episodes)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": _features(episodes, cams, fps)}
    (meta / "info.json").write_text(json.dumps(info, indent=2))
    (meta / "stats.json").write_text(json.dumps(_dataset_stats(episodes, cams, table, columns)))


def _frame_columns(episodes: list[Episode], cams: list[str], task_index: dict, fps: float) -> tuple[dict, list]:
    """The per-frame columns of data/*.parquet and the rows of meta/episodes/*.parquet."""
    has_state = episodes[0].state is not None
    columns: dict[str, list] = {k: [] for k in FRAME_COLUMNS}
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
    return columns, ep_rows


def _features(episodes: list[Episode], cams: list[str], fps: float) -> dict:
    D = episodes[0].actions.shape[1]
    features = {"action": {"dtype": "float32", "shape": [D], "names": [f"a{i}" for i in range(D)]},
                **{k: {"dtype": t, "shape": [1], "names": None} for k, t in SCALAR_FEATURES.items()}}
    if episodes[0].state is not None:
        S = episodes[0].state.shape[1]
        features["observation.state"] = {"dtype": "float32", "shape": [S], "names": [f"s{i}" for i in range(S)]}
    for cam in cams:
        h, w = episodes[0].images[cam].shape[1:3]
        features[f"observation.images.{cam}"] = {
            "dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
            "info": {"video.height": h, "video.width": w, "video.codec": "h264", "video.pix_fmt": "yuv420p",
                     "video.is_depth_map": False, "video.fps": fps, "video.channels": 3, "has_audio": False}}
    return features


def _dataset_stats(episodes: list[Episode], cams: list[str], table: pa.Table, columns: dict) -> dict:
    stats = {"action": _stats(table.column("action").to_pylist())}
    if "observation.state" in columns:
        stats["observation.state"] = _stats(table.column("observation.state").to_pylist())
    stats["next.reward"] = _stats(np.asarray(columns["next.reward"])[:, None])
    for cam in cams:
        imgs = np.concatenate([ep.images[cam] for ep in episodes]).astype(np.float32) / 255.0
        s = _stats(imgs.reshape(-1, 3))
        stats[f"observation.images.{cam}"] = {k: [[[x]] for x in v] if k != "count" else v for k, v in s.items()}
    return stats
