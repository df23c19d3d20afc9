"""The one front door for datasets: open a path, find its format, get episodes or a streamed frame store.

`open_dataset(path)` recognises (format="auto"):

  LeRobot v3.0 / v2.1 folder   meta/info.json with codebase_version
  robomimic HDF5 file          a `data` group of demo_N groups
  ALOHA episode file           /observations/images/<cam> and /action (the ALOHA/ACT recorders' layout)
  ALOHA episode folder         episode_*.hdf5 files in that layout

and refuses anything else with the list of what it looked for. `data inspect`, `train`, `benchmark`
and `qvalues` all open data here.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from qsft_robot.config import DATA_FORMATS
from qsft_robot.data.episode import DatasetError, Episode

logger = logging.getLogger(__name__)
# the formats found are config.DataFormatName's values; "auto" and "hdf5" (robomimic or ALOHA, by content)
# only narrow the search
LEROBOT, ROBOMIMIC, ALOHA = "lerobot", "robomimic", "aloha"

LOOKED_FOR = ("LeRobot v2.1/v3.0 folder (meta/info.json)", "robomimic HDF5 file (data/demo_N)",
              "ALOHA episode file (/observations/images/<cam>, /action)",
              "ALOHA episode folder (episode_*.hdf5 files)")
HDF5_SUFFIXES = (".hdf5", ".h5")


@dataclass
class Detected:
    """A recognised dataset: its format, a human label ("LeRobot v3.0", "ALOHA episode folder") and files."""
    format: str                 # lerobot | robomimic | aloha
    label: str
    path: Path
    files: list[Path] = field(default_factory=list)  # ALOHA folder: its episode files


def _hdf5_layout(path: Path) -> str | None:
    import h5py
    try:
        with h5py.File(path, "r") as f:
            if "observations" in f and "action" in f:
                return ALOHA
            if "data" in f:
                return ROBOMIMIC
    except OSError:
        return None
    return None


def _aloha_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("episode_*.hdf5")) + sorted(folder.glob("episode_*.h5"))
    if not files:  # other names, same layout
        files = sorted(p for s in HDF5_SUFFIXES for p in folder.glob(f"*{s}"))
    return [f for f in files if _hdf5_layout(f) == ALOHA]


def _unknown(path: Path, why: str) -> DatasetError:
    return DatasetError(f"{path}: {why}; looked for: " + "; ".join(LOOKED_FOR))


def detect_format(path: str | Path, format: str = "auto") -> Detected:
    """Which of the supported layouts `path` is; `format` narrows the choice (and is then checked)."""
    from qsft_robot.data.lerobot_reader import read_info

    path = Path(path)
    if format not in DATA_FORMATS:
        raise DatasetError(f"data.format={format!r} is not one of {', '.join(DATA_FORMATS)}")
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    if path.is_dir() and (path / "meta" / "info.json").is_file():
        found = Detected(LEROBOT, f"LeRobot {read_info(path)['codebase_version']}", path)
    elif path.is_dir():
        files = _aloha_files(path)
        if not files:
            raise _unknown(path, "no meta/info.json and no ALOHA episode files in this folder")
        found = Detected(ALOHA, "ALOHA episode folder", path, files)
    else:
        layout = _hdf5_layout(path)
        if layout is None:
            raise _unknown(path, "not a dataset file this library reads")
        label = "ALOHA episode file" if layout == ALOHA else "robomimic HDF5"
        found = Detected(layout, label, path, [path])
    compatible = {"auto", found.format} | ({"hdf5"} if found.format != LEROBOT else set())
    if format not in compatible:
        raise DatasetError(f"{path}: data.format={format}, but this is a {found.label}")
    return found


@dataclass
class Dataset:
    """An opened dataset: `episodes()` in memory, `iter_episodes(images=False)` as a cheap first pass."""
    detected: Detected
    cameras: list[str] | None = None
    instruction: str = ""
    drop_nonfinite: bool = False

    @property
    def format(self) -> str:
        return self.detected.format

    @property
    def label(self) -> str:
        return self.detected.label

    @property
    def streamable(self) -> bool:
        """Frames can be decoded episode by episode (LeRobot): training streams them into a memmap."""
        return self.format == LEROBOT

    def iter_episodes(self, images: bool = True) -> Iterator[Episode]:
        if self.format == LEROBOT:
            from qsft_robot.data.lerobot_reader import iter_lerobot
            yield from iter_lerobot(self.detected.path, cameras=self.cameras, drop_nonfinite=self.drop_nonfinite,
                                    images=images)
            return
        from qsft_robot.data.hdf5_io import read_aloha, read_robomimic
        for f in self.detected.files:
            read = read_aloha if self.format == ALOHA else read_robomimic
            yield from read(f, instruction=self.instruction)

    def episodes(self) -> list[Episode]:
        eps = list(self.iter_episodes())
        logger.info("read %d episodes (%s) from %s", len(eps), self.label, self.detected.path)
        return eps

    def camera_shapes(self) -> dict[str, tuple[int, ...]]:
        """Camera name -> (H, W, 3). LeRobot declares it in info.json, so no video is decoded; HDF5 layouts
        are read up to their first episode."""
        if self.format == LEROBOT:
            from qsft_robot.data.lerobot_reader import LeRobotReader
            return LeRobotReader(self.detected.path, cameras=self.cameras).camera_shapes()
        first = next(iter(self.iter_episodes()), None)
        return {} if first is None else {c: tuple(v.shape[1:]) for c, v in first.images.items()}

    def iter_frame_chunks(self, episode_indices: list[int], chunk_bytes: int = 32 << 20) -> Iterator[np.ndarray]:
        """Frames of the given episodes (LeRobot only: `streamable`), in that order, as (n, cameras, H, W, 3)
        uint8 blocks of at most `chunk_bytes` (one frame at least); cameras in `cameras` order, else sorted by
        name. What a frame cache is written from: memory stays at a few blocks, whatever the episodes'
        lengths and the cameras' sizes."""
        from qsft_robot.data.lerobot_reader import LeRobotReader

        if not self.streamable:
            raise DatasetError(f"{self.detected.path}: {self.label} frames are not streamed")
        reader = LeRobotReader(self.detected.path, cameras=self.cameras)
        if not self.cameras:  # by name, the order build_transitions stacks in-memory episodes' cameras in
            reader.cam_keys = sorted(reader.cam_keys, key=lambda k: k.split(".")[-1])
        frame_bytes = sum(int(np.prod(s)) for s in reader.camera_shapes().values())
        chunk_frames = max(1, chunk_bytes // max(frame_bytes, 1))
        metas = {em["episode_index"]: em for em in reader.metas}
        try:
            for e in episode_indices:
                yield from reader.frame_chunks(metas[e], chunk_frames, self.drop_nonfinite)
        finally:
            reader.close()


def open_dataset(path: str | Path, format: str = "auto", cameras: list[str] | None = None, instruction: str = "",
                 drop_nonfinite: bool = False) -> Dataset:
    return Dataset(detect_format(path, format), cameras or None, instruction, drop_nonfinite)


def dataset_files_signature(path: str | Path) -> str:
    """Every file of a dataset folder with its size and modification time: a dataset re-recorded or edited in
    place (same episode count, other frames) gets another frame cache instead of the stale one."""
    root = Path(path).resolve()
    files = []
    for d, subdirs, names in os.walk(root, followlinks=True):   # linked videos/ or data/ folders count too
        subdirs[:] = sorted(s for s in subdirs if not s.startswith("."))   # .git, .cache: not the data
        files += [Path(d) / n for n in names if not n.startswith(".")]
    h = hashlib.sha256(str(root).encode())
    for p in sorted(files):
        st = p.stat()
        h.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def load_training_data(data_cfg, keep: Callable[[Episode], bool] = lambda ep: True
                       ) -> tuple[list[Episode], object | None]:
    """Episodes to train on, from `data_cfg` (config.DataConfig).

    LeRobot data is streamed: episodes come back without frames and the frames go into a uint8 memmap in
    the shared cache (data.feature_cache or $QSFT_ROBOT_CACHE, under frames/), named by the dataset's files
    and the episodes kept, so every run on the same data (BC, Q-SFT, each seed, a resumed run) reads one copy
    and datasets larger than RAM train. Other formats are read into memory. Returns (episodes, frame store or None).
    """
    from qsft_robot.data.cache_dirs import default_cache_root
    from qsft_robot.data.image_store import MemmapImageStore

    ds = open_dataset(data_cfg.path, data_cfg.format, data_cfg.cameras, data_cfg.instruction,
                      data_cfg.drop_nonfinite)
    if not ds.streamable:
        return [e for e in ds.episodes() if keep(e)], None
    light = [e for e in ds.iter_episodes(images=False) if keep(e)]
    indices = [int(e.meta["episode_index"]) for e in light]
    source = json.dumps({"dataset": dataset_files_signature(data_cfg.path), "cameras": data_cfg.cameras,
                         "episodes": hashlib.sha256(repr(indices).encode()).hexdigest()}, sort_keys=True)
    total = sum(len(e) for e in light)
    folder = default_cache_root(data_cfg.feature_cache) / "frames" / hashlib.sha256(source.encode()).hexdigest()[:20]
    store = MemmapImageStore.open_if_valid(folder, total, source)
    if store is None:
        store = MemmapImageStore.write(folder, ds.iter_frame_chunks(indices), total_frames=total, source=source)
    else:
        logger.info("frames reused from %s", folder)
    return light, store
