"""Where the shared caches (decoded frames, frozen-tower features, built base models) live, and how a cache
folder is put in place when several processes may build the same one at once.

Why shared rather than per run: BC, filtered BC, Q-SFT and every seed train in their own run folders on the
same data; a per-run copy of a dataset's decoded frames is a gigabyte per run for nothing. The folder names
are hashes of what decides their content, so two processes that build the same name build the same bytes.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


def default_cache_root(override: str | Path = "") -> Path:
    """`override` (data.feature_cache) when given, else $QSFT_ROBOT_CACHE, else ~/.cache/qsft_robot."""
    if override:
        return Path(override)
    return Path(os.environ.get("QSFT_ROBOT_CACHE") or Path.home() / ".cache" / "qsft_robot")


@contextmanager
def building_folder(folder: Path):
    """A fresh temporary sibling of `folder` for this process to write into (then `publish`), removed if the build
    raises or is interrupted. A unique name, since processes on other hosts or in containers (pid 1 each) may
    share the cache."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(tmp: Path, folder: Path, reopen: Callable[[], T | None]) -> T | None:
    """Move the finished `tmp` to `folder`. Another process (a parallel benchmark seed on the same data) may have
    finished first: its folder, which a reader may already have open, is kept and this copy dropped; that
    process's result is returned (reopen()). A folder of this name that is not valid is a broken one: moved
    aside, then replaced. Returns None when this process's copy was put in place."""
    for _ in range(2):
        try:
            os.replace(tmp, folder)
            return None
        except OSError:   # the folder exists and is not empty
            done = reopen()
            if done is not None:
                shutil.rmtree(tmp)
                logger.info("%s: built by another process meanwhile; that copy is used", folder)
                return done
            broken = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".broken"))
            try:
                os.replace(folder, broken / "old")
            except FileNotFoundError:   # another process moved it aside first
                pass
            shutil.rmtree(broken, ignore_errors=True)
    raise OSError(f"could not move {tmp} to {folder}")
