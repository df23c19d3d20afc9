"""Frozen image-tower features, computed once per frame and memmapped, shared by every run on the data.

Why: with the tiny model's pretrained tower frozen, every training step would otherwise re-run
the same convolutions on the same frames; caching them leaves the projector and the language model
as a step's whole cost (bench/train_step.py). Why the cache lives in one shared folder rather than in
a run folder: BC, filtered BC, Q-SFT and every seed train in their own run folders on the same
frames, and the key makes sharing safe. The key is the frames' content hash plus whatever decides
the features (weights hash, image size, output stride, normalisation); when any of them changes the
key changes and the features are rebuilt. Folders are written to a temporary name and renamed, so a
killed run never leaves a half cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qsft_robot.data.cache_dirs import building_folder, default_cache_root, publish
from qsft_robot.data.image_store import ImageStore, MemmapImageStore

logger = logging.getLogger(__name__)


class FeatureStore(MemmapImageStore):
    """(N, cams, C, h, w) float16 feature maps addressed by transition index, like an ImageStore."""
    data_file, meta_file, dtype = "features.f16", "features.json", np.float16


def frames_fingerprint(frames: ImageStore, chunk: int = 1024) -> str:
    """Content hash of every frame (blake2b, ~1 GB/s): a re-recorded dataset with the same frame count
    can never reuse stale features."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(frames.shape).encode())
    for start in range(0, len(frames), chunk):
        h.update(np.ascontiguousarray(frames[start:start + chunk]).tobytes())
    return h.hexdigest()


def cached_features(frames: ImageStore, encode: Callable[[np.ndarray], np.ndarray], key: dict,
                    cache_root: str | Path | None = None, batch_size: int = 256) -> FeatureStore:
    """The FeatureStore for `frames` under `key`, built with `encode` when absent or stale.

    encode: (n, cams, H, W, 3) uint8 -> (n, cams, C, h, w) features (any float dtype).
    """
    root = default_cache_root(cache_root or "")
    source = json.dumps({**key, "frames": frames_fingerprint(frames)}, sort_keys=True)
    folder = root / "features" / hashlib.sha256(source.encode()).hexdigest()[:20]
    store = FeatureStore.open_if_valid(folder, len(frames), source)
    if store is not None:
        logger.info("image features reused from %s", folder)
        return store
    with building_folder(folder) as tmp:
        shape = None
        with open(tmp / FeatureStore.data_file, "wb") as fh:
            for start in tqdm(range(0, len(frames), batch_size), desc="cache image features", unit="batch"):
                feats = np.asarray(encode(frames[start:start + batch_size]), dtype=np.float16)
                if not np.isfinite(feats).all():
                    raise ValueError(f"image features of frames {start}..{start + len(feats)} are not finite "
                                     f"(float16 overflow?)")
                shape = shape or feats.shape[1:]
                fh.write(np.ascontiguousarray(feats).tobytes())
        (tmp / FeatureStore.meta_file).write_text(json.dumps({"shape": [len(frames), *shape], "source": source}))
        done = publish(tmp, folder, lambda: FeatureStore.open_if_valid(folder, len(frames), source))
    if done is not None:
        return done
    logger.info("cached image features %s for %d frames in %s", tuple(shape), len(frames), folder)
    return FeatureStore(folder)
