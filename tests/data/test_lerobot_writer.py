"""Round trips through our writers and clear errors on bad files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from qsft_robot.data.episode import DatasetError, Episode
from qsft_robot.data.hdf5_io import write_robomimic
from qsft_robot.data.lerobot_reader import read_lerobot
from qsft_robot.data.lerobot_writer import write_lerobot_v30
from qsft_robot.data.sources import open_dataset


def make_episodes(n=3, T=6, seed=0):
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(n):
        # smooth images so the H.264 round trip is close (noise would not be)
        base = rng.integers(0, 255, size=(1, 1, 1, 3))
        img = np.clip(base + np.linspace(0, 40, 32)[None, :, None, None] + 5 * np.arange(T)[:, None, None, None],
                      0, 255).astype(np.uint8)
        img = np.broadcast_to(img, (T, 32, 32, 3)).copy()
        eps.append(Episode(images={"front": img}, actions=rng.normal(size=(T, 4)).astype(np.float32),
                           instruction=f"reach the {['red', 'green', 'blue'][i % 3]} block",
                           state=rng.normal(size=(T, 4)).astype(np.float32),
                           rewards=np.r_[np.zeros(T - 1), float(i % 2)].astype(np.float32),
                           success=bool(i % 2), terminated=bool(i % 2)))
    return eps


def test_lerobot_v30_round_trip(tmp_path):
    eps = make_episodes()
    write_lerobot_v30(eps, tmp_path / "ds", fps=10)
    back, info = read_lerobot(tmp_path / "ds")
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 3
    for a, b in zip(eps, back):
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.state, b.state)
        np.testing.assert_array_equal(a.rewards, b.rewards)
        assert a.instruction == b.instruction and a.success == b.success
        assert np.abs(a.images["front"].astype(int) - b.images["front"].astype(int)).mean() < 3.0
    stats = json.loads((tmp_path / "ds/meta/stats.json").read_text())
    assert {"q01", "q99", "mean", "std"} <= set(stats["action"])


def test_hdf5_round_trip(tmp_path):
    eps = make_episodes()
    write_robomimic(eps, tmp_path / "d.hdf5")
    back = open_dataset(tmp_path / "d.hdf5").episodes()
    for a, b in zip(eps, back):
        np.testing.assert_array_equal(a.images["front"], b.images["front"])
        np.testing.assert_array_equal(a.actions, b.actions)
        assert (a.instruction, a.success, a.terminated) == (b.instruction, b.success, b.terminated)


def test_missing_info_json_is_named(tmp_path):
    (tmp_path / "ds" / "meta").mkdir(parents=True)
    with pytest.raises(DatasetError, match="info.json"):
        read_lerobot(tmp_path / "ds")


def test_unknown_codebase_version(tmp_path):
    write_lerobot_v30(make_episodes(1), tmp_path / "ds", fps=10)
    p = tmp_path / "ds/meta/info.json"
    info = json.loads(p.read_text())
    info["codebase_version"] = "v9.9"
    p.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="v9.9"):
        read_lerobot(tmp_path / "ds")


def test_truncated_parquet_and_missing_video(tmp_path):
    write_lerobot_v30(make_episodes(1), tmp_path / "ds", fps=10)
    data = tmp_path / "ds/data/chunk-000/file-000.parquet"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(DatasetError, match="file-000.parquet"):
        read_lerobot(tmp_path / "ds")
    write_lerobot_v30(make_episodes(1), tmp_path / "ds2", fps=10)
    (tmp_path / "ds2/videos/observation.images.front/chunk-000/file-000.mp4").unlink()
    with pytest.raises(DatasetError, match="missing video"):
        read_lerobot(tmp_path / "ds2")


def test_nan_actions_are_rejected_and_nothing_half_written(tmp_path):
    eps = make_episodes(2)
    eps[1].actions[2, 0] = np.nan
    with pytest.raises(DatasetError, match="NaN"):
        write_lerobot_v30(eps, tmp_path / "ds", fps=10)
    assert list(tmp_path.iterdir()) == []


def test_hdf5_missing_keys(tmp_path):
    import h5py

    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f.create_dataset("data/demo_0/obs/front_image", data=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match="demo_0.*actions"):
        open_dataset(tmp_path / "bad.hdf5").episodes()
