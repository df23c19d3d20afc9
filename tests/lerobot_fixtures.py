"""LeRobot datasets built straight from the documented upstream layouts (not with our writer)."""
from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FPS = 10


def frames(T, seed, size=32):
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=3)
    img = np.zeros((T, size, size, 3), np.uint8)
    for t in range(T):
        img[t] = np.clip(base + 6 * t, 0, 255)
        img[t, :, : size // 2] = np.clip(base[::-1] + 3 * t, 0, 255)
    return img


def mp4(path: Path, imgs: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = imgs.shape[2], imgs.shape[1], "yuv420p"
        s.options = {"crf": "10"}
        for im in imgs:
            for p in s.encode(av.VideoFrame.from_ndarray(im, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def frame_table(ep, T, start, task_index, actions, extra=None):
    cols = {
        "action": pa.array(actions.tolist(), type=pa.list_(pa.float32())),
        "observation.state": pa.array((actions * 2).tolist(), type=pa.list_(pa.float32())),
        "timestamp": pa.array((np.arange(T) / FPS).astype(np.float32)),
        "frame_index": pa.array(np.arange(T)), "episode_index": pa.array(np.full(T, ep)),
        "index": pa.array(np.arange(start, start + T)), "task_index": pa.array(np.full(T, task_index)),
        "next.reward": pa.array(np.r_[np.zeros(T - 1), 1.0].astype(np.float32)),
        "next.done": pa.array([False] * (T - 1) + [True]),
    }
    cols.update(extra or {})
    return pa.table(cols)


def features(D, cam_dtype, size=32):
    return {"action": {"dtype": "float32", "shape": [D], "names": None},
            "observation.state": {"dtype": "float32", "shape": [D], "names": None},
            "observation.images.top": {"dtype": cam_dtype, "shape": [size, size, 3],
                                       "names": ["height", "width", "channels"]},
            "timestamp": {"dtype": "float32", "shape": [1]}, "frame_index": {"dtype": "int64", "shape": [1]},
            "episode_index": {"dtype": "int64", "shape": [1]}, "index": {"dtype": "int64", "shape": [1]},
            "task_index": {"dtype": "int64", "shape": [1]}, "next.reward": {"dtype": "float32", "shape": [1]},
            "next.done": {"dtype": "bool", "shape": [1]}}


def build_v21(root: Path, lengths=(5, 7), images="video", D=3):
    """v2.1: one parquet (and one MP4 per camera) per episode, tasks.jsonl / episodes.jsonl."""
    rng = np.random.default_rng(0)
    (root / "meta").mkdir(parents=True)
    tasks = ["pick up the cube", "open the drawer"]
    truth = []
    start = 0
    for e, T in enumerate(lengths):
        acts = rng.normal(size=(T, D)).astype(np.float32)
        imgs = frames(T, e)
        extra = {}
        if images == "image":
            cells = [{"bytes": cv2.imencode(".png", im[..., ::-1])[1].tobytes(), "path": None} for im in imgs]
            extra["observation.images.top"] = pa.array(cells)
        else:
            mp4(root / f"videos/chunk-000/observation.images.top/episode_{e:06d}.mp4", imgs)
        t = frame_table(e, T, start, e % 2, acts, extra)
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, path)
        truth.append((acts, imgs, tasks[e % 2]))
        start += T
    (root / "meta/tasks.jsonl").write_text("\n".join(json.dumps({"task_index": i, "task": t})
                                                     for i, t in enumerate(tasks)) + "\n")
    (root / "meta/episodes.jsonl").write_text("\n".join(json.dumps({"episode_index": e, "tasks": [tasks[e % 2]],
                                                                    "length": T}) for e, T in enumerate(lengths)))
    info = {"codebase_version": "v2.1", "robot_type": "koch", "total_episodes": len(lengths), "total_frames": start,
            "total_tasks": 2, "total_videos": len(lengths) if images == "video" else 0, "total_chunks": 1,
            "chunks_size": 1000, "fps": FPS, "splits": {"train": f"0:{len(lengths)}"},
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
            if images == "video" else None,
            "features": features(D, images)}
    (root / "meta/info.json").write_text(json.dumps(info))
    return truth


def build_v30(root: Path, lengths=(4, 6, 5), D=2):
    """v3.0: episodes packed into one parquet and one MP4, located through meta/episodes + from_timestamp."""
    import pandas as pd

    rng = np.random.default_rng(1)
    truth, tables, all_imgs, rows = [], [], [], []
    start, t_off = 0, 0.0
    for e, T in enumerate(lengths):
        acts = rng.normal(size=(T, D)).astype(np.float32)
        imgs = frames(T, 10 + e)
        tables.append(frame_table(e, T, start, 0, acts, {"next.success": pa.array([False] * (T - 1) + [e != 1])}))
        all_imgs.append(imgs)
        rows.append({"episode_index": e, "tasks": ["stack the blocks"], "length": T,
                     "data/chunk_index": 0, "data/file_index": 0,
                     "dataset_from_index": start, "dataset_to_index": start + T,
                     "videos/observation.images.top/chunk_index": 0, "videos/observation.images.top/file_index": 0,
                     "videos/observation.images.top/from_timestamp": t_off,
                     "videos/observation.images.top/to_timestamp": t_off + T / FPS,
                     "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        truth.append((acts, imgs, "stack the blocks", e != 1))
        start += T
        t_off += T / FPS
    (root / "data/chunk-000").mkdir(parents=True)
    pq.write_table(pa.concat_tables(tables), root / "data/chunk-000/file-000.parquet")
    mp4(root / "videos/observation.images.top/chunk-000/file-000.mp4", np.concatenate(all_imgs))
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    pd.DataFrame({"task_index": [0]}, index=["stack the blocks"]).to_parquet(root / "meta/tasks.parquet")
    feats = features(D, "video")
    feats["next.success"] = {"dtype": "bool", "shape": [1]}
    info = {"codebase_version": "v3.0", "robot_type": "so101", "total_episodes": len(lengths), "total_frames": start,
            "total_tasks": 1, "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 500,
            "fps": FPS, "splits": {"train": f"0:{len(lengths)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4", "features": feats}
    (root / "meta/info.json").write_text(json.dumps(info))
    return truth


def build_aloha(path: Path, T=6, compress=False):
    import h5py

    rng = np.random.default_rng(2)
    imgs = {c: frames(T, i) for i, c in enumerate(("cam_high", "cam_left_wrist"))}
    qpos = rng.normal(size=(T, 14)).astype(np.float32)
    action = rng.normal(size=(T, 14)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.attrs["sim"] = False
        f.attrs["compress"] = compress
        f.create_dataset("observations/qpos", data=qpos)
        f.create_dataset("observations/qvel", data=np.zeros_like(qpos))
        f.create_dataset("action", data=action)
        for cam, im in imgs.items():
            if compress:
                enc = [cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].ravel() for x in im]
                pad = np.zeros((T, max(len(x) for x in enc)), np.uint8)
                for i, x in enumerate(enc):
                    pad[i, : len(x)] = x
                f.create_dataset(f"observations/images/{cam}", data=pad)
            else:
                f.create_dataset(f"observations/images/{cam}", data=im)
    return imgs, qpos, action
