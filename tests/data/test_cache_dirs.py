"""The shared caches: one decoded copy of a dataset's frames for every run on it, never a stale one, and a
folder that two processes built at once ends up whole."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from qsft_robot.config import DataConfig
from qsft_robot.data.cache_dirs import building_folder, publish
from qsft_robot.data.image_store import MemmapImageStore
from qsft_robot.data.lerobot_reader import read_lerobot
from qsft_robot.data.lerobot_writer import write_lerobot_v30
from qsft_robot.data.sources import load_training_data
from qsft_robot.sim.collect import collect_episodes


def _store(folder, value: int, source: str = "s") -> MemmapImageStore:
    return MemmapImageStore.write(folder, [np.full((2, 1, 4, 4, 3), value, np.uint8)], total_frames=2, source=source)


def test_publish_keeps_the_copy_another_process_finished_first(tmp_path):
    first = _store(tmp_path / "f", 1)
    # this process built the same folder meanwhile: its copy is dropped, the first one (maybe open) is kept
    with building_folder(tmp_path / "f") as tmp:
        (tmp / "frames.u8").write_bytes(b"x")
        got = publish(tmp, tmp_path / "f", lambda: MemmapImageStore.open_if_valid(tmp_path / "f", 2, "s"))
    assert got is not None and got.folder == first.folder and not tmp.exists()
    assert int(first[0].max()) == 1
    # a broken folder of that name (not valid for this source) is replaced, not adopted
    (tmp_path / "f" / "frames.json").write_text(json.dumps({"shape": [2, 1, 4, 4, 3], "source": "other"}))
    again = _store(tmp_path / "f", 7)
    assert int(again[1].max()) == 7 and not list(tmp_path.glob("f.*"))


def test_frame_cache_is_shared_and_follows_the_dataset_files(tmp_path):
    ds = tmp_path / "ds"
    eps = collect_episodes("arm_reach", 3, "mixed", seed=0)
    write_lerobot_v30(eps, ds, fps=10)
    cfg = DataConfig(path=str(ds), feature_cache=str(tmp_path / "cache"))
    _, a = load_training_data(cfg)
    _, b = load_training_data(cfg)
    assert a.folder == b.folder and a.folder.parent == tmp_path / "cache" / "frames"
    # the dataset re-recorded in place, the same episodes and lengths, other frames: another cache folder
    shutil.rmtree(ds)
    for e in eps:
        e.images["wrist"] = 255 - e.images["wrist"]
    write_lerobot_v30(eps, ds, fps=10)
    _, c = load_training_data(cfg)
    assert c.folder != a.folder
    decoded = np.concatenate([np.stack([e.images["wrist"]], 1) for e in read_lerobot(ds)[0]])
    np.testing.assert_array_equal(c[np.arange(len(decoded))], decoded)


def test_a_failed_build_leaves_no_temporary_folder(tmp_path):
    with pytest.raises(ValueError, match="holds 2 frames"):
        MemmapImageStore.write(tmp_path / "f", [np.zeros((2, 1, 4, 4, 3), np.uint8)], total_frames=3)
    assert list(tmp_path.iterdir()) == []
