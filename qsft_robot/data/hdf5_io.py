"""HDF5 datasets: robomimic files (read and write) and ALOHA/ACT episode files (read).

robomimic layout: data/demo_N/{obs/<key>, actions, rewards, dones}, data.attrs['env_args']. Images
are stored as obs/<cam>_image (robomimic's convention), state as obs/robot_state; the instruction
goes into the demo's attrs (robomimic has no language field; 'lang' is what LIBERO uses).
Which layout a path holds is decided by data/sources.py, the front door every reader goes through.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np

from qsft_robot.data.episode import DatasetError, Episode


def write_robomimic(episodes: list[Episode], path: str | Path, env_name: str = "qsft_sim") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            data.attrs["env_args"] = json.dumps({"env_name": env_name, "type": 0, "env_kwargs": {}})
            total = 0
            for i, ep in enumerate(episodes):
                ep.validate(f"episode {i}")
                g = data.create_group(f"demo_{i}")
                g.attrs["num_samples"] = len(ep)
                g.attrs["lang"] = ep.instruction
                g.attrs["success"] = bool(ep.success)
                g.attrs["terminated"] = bool(ep.terminated)
                for cam, frames in ep.images.items():
                    g.create_dataset(f"obs/{cam}_image", data=frames, compression="gzip", compression_opts=4)
                if ep.state is not None:
                    g.create_dataset("obs/robot_state", data=ep.state)
                g.create_dataset("actions", data=ep.actions)
                rewards = ep.rewards if ep.rewards is not None else np.zeros(len(ep), np.float32)
                g.create_dataset("rewards", data=rewards)
                dones = np.zeros(len(ep), np.int64)
                dones[-1] = int(ep.terminated)
                g.create_dataset("dones", data=dones)
                total += len(ep)
            data.attrs["total"] = total
            f.create_group("mask").create_dataset("train", data=np.array([f"demo_{i}" for i in range(len(episodes))],
                                                                         dtype="S"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_aloha(path: str | Path, instruction: str = "", success: bool = True, image_keys: list[str] | None = None,
               state_key: str = "observations/qpos", action_key: str = "action", **_) -> list[Episode]:
    """ALOHA/ACT episode file: /observations/images/<cam>, /observations/qpos, /action.

    The JPEG variant (root attr compress=True) stores each frame as zero-padded encoded bytes; ACT
    encodes the RGB array as-is, so decoded arrays keep that channel order. ALOHA logs carry neither
    an instruction nor a success flag: both come from the caller (demonstrations default to success).
    """
    import cv2

    path = Path(path)
    with h5py.File(path, "r") as f:
        for key in (action_key, "observations/images"):
            if key not in f:
                raise DatasetError(f"{path}: missing '{key}' (ALOHA layout)")
        compressed = bool(f.attrs.get("compress", False))
        cams = image_keys or sorted(f["observations/images"].keys())
        images = {}
        for cam in cams:
            if cam not in f["observations/images"]:
                raise DatasetError(f"{path}: missing camera 'observations/images/{cam}'")
            raw = f["observations/images"][cam][()]
            if compressed:
                frames = [cv2.imdecode(row, cv2.IMREAD_COLOR) for row in raw]
                if any(fr is None for fr in frames):
                    raise DatasetError(f"{path}: undecodable JPEG frame in camera '{cam}'")
                raw = np.stack(frames)
            images[cam] = raw
        state = f[state_key][()].astype(np.float32) if state_key in f else None
        ep = Episode(images=images, actions=f[action_key][()].astype(np.float32), instruction=instruction,
                     state=state, success=success, terminated=success, meta={"file": str(path), "has_success": False})
    ep.validate(str(path))
    return [ep]


def read_robomimic(path: str | Path, split: str | None = None, image_keys: list[str] | None = None,
                   state_key: str = "robot_state", instruction: str | None = None, **_) -> list[Episode]:
    """robomimic layout; `image_keys` maps obs keys to cameras (default: every obs/*_image)."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        if "data" not in f:
            raise DatasetError(f"{path}: no 'data' group (expected robomimic layout data/demo_N/...)")
        names = sorted(f["data"].keys(), key=lambda n: int(n.split("_")[-1]) if n.split("_")[-1].isdigit() else 0)
        if split:
            if f"mask/{split}" not in f:
                raise DatasetError(f"{path}: no mask/{split}")
            names = [n.decode() for n in f[f"mask/{split}"][()]]
        out = []
        for n in names:
            g, where = f["data"][n], f"{path} {n}"
            for key in ("actions", "obs"):
                if key not in g:
                    raise DatasetError(f"{where}: missing '{key}'")
            keys = image_keys or [k for k in g["obs"] if k.endswith("_image")]
            if not keys:
                raise DatasetError(f"{where}: no image observations (obs/*_image)")
            images = {k.removesuffix("_image"): g["obs"][k][()] for k in keys}
            state = g["obs"][state_key][()].astype(np.float32) if state_key in g["obs"] else None
            rewards = g["rewards"][()].astype(np.float32) if "rewards" in g else None
            dones = g["dones"][()] if "dones" in g else None
            success = bool(g.attrs.get("success", rewards is not None and rewards.max() > 0))
            ep = Episode(images=images, actions=g["actions"][()].astype(np.float32),
                         instruction=str(g.attrs.get("lang", instruction or "")),
                         state=None if state is None else state.astype(np.float32), rewards=rewards,
                         success=success, terminated=bool(dones[-1]) if dones is not None else success,
                         meta={"demo": n, "has_success": "success" in g.attrs})
            ep.validate(where)
            out.append(ep)
    return out
