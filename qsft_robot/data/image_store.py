"""Frame storage for training: in memory, or a uint8 memmap on disk for datasets larger than RAM.

Videos are decoded once, while the store is written; training then reads raw frames by index, so
DataLoader workers never decode video (PyAV in forked workers is where loaders crash).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qsft_robot.data.cache_dirs import building_folder, publish

logger = logging.getLogger(__name__)


class ImageStore:
    """(N, cams, H, W, 3) uint8 frames addressed by transition index."""

    def __init__(self, array: np.ndarray):
        self.array = array

    @property
    def shape(self) -> tuple:
        return tuple(self.array.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        return self.array[idx]


class MemmapImageStore(ImageStore):
    """Backed by `frames.u8` + `frames.json` (shape) in a folder; opened lazily, so it pickles into
    DataLoader workers by path rather than by content."""
    data_file, meta_file, dtype = "frames.u8", "frames.json", np.uint8

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta = json.loads((self.folder / self.meta_file).read_text())
        self._shape = tuple(meta["shape"])
        self.source = meta.get("source", "")
        self._mm: np.memmap | None = None

    @property
    def shape(self) -> tuple:
        return self._shape

    @property
    def array(self) -> np.memmap:
        if self._mm is None:
            self._mm = np.memmap(self.folder / self.data_file, dtype=self.dtype, mode="r", shape=self._shape)
        return self._mm

    def __getitem__(self, idx) -> np.ndarray:
        return np.asarray(self.array[idx])

    def __getstate__(self):
        return {"folder": self.folder, "_shape": self._shape, "source": self.source, "_mm": None}

    @classmethod
    def write(cls, folder: str | Path, chunks: Iterable[np.ndarray], total_frames: int | None = None,
              source: str = "") -> "MemmapImageStore":
        """Stream (n, cams, H, W, 3) uint8 blocks of frames into the store, block after block, so memory stays
        at one block whatever the dataset's size; the folder is complete or absent (temp + rename), and a folder
        of the same name that another process finished first is kept (data/cache_dirs.py)."""
        folder = Path(folder)
        with building_folder(folder) as tmp:
            n, frame_shape = 0, None
            bar = tqdm(total=total_frames, desc="cache frames", unit="frame")
            with open(tmp / cls.data_file, "wb") as fh, bar:
                for block in chunks:
                    if frame_shape is None:
                        frame_shape = block.shape[1:]
                    elif block.shape[1:] != frame_shape:
                        raise ValueError(f"frames {block.shape[1:]} after frame {n} differ from {frame_shape}")
                    fh.write(np.ascontiguousarray(block, dtype=np.uint8).tobytes())
                    n += len(block)
                    bar.update(len(block))
            if frame_shape is None:
                raise ValueError("no frames to cache")
            if total_frames is not None and n != total_frames:
                raise ValueError(f"frame cache holds {n} frames, the dataset has {total_frames}")
            (tmp / cls.meta_file).write_text(json.dumps({"shape": [n, *frame_shape], "source": source}))
            done = publish(tmp, folder, lambda: cls.open_if_valid(folder, n, source))
        if done is not None:
            return done
        logger.info("cached %d frames (%.1f MB) in %s", n, n * np.prod(frame_shape) / 1e6, folder)
        return cls(folder)

    @classmethod
    def open_if_valid(cls, folder: str | Path, total_frames: int, source: str) -> "MemmapImageStore | None":
        folder = Path(folder)
        try:
            store = cls(folder)
            size = (folder / cls.data_file).stat().st_size
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return None
        size_ok = size == int(np.prod(store.shape)) * np.dtype(cls.dtype).itemsize
        return store if size_ok and store.shape[0] == total_frames and store.source == source else None
