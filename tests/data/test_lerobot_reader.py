"""Our readers on datasets laid out exactly as upstream tools write them (tests/lerobot_fixtures.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lerobot_fixtures import build_aloha, build_v21, build_v30
from qsft_robot.data.episode import DatasetError
from qsft_robot.data.hdf5_io import read_aloha, read_robomimic
from qsft_robot.data.lerobot_reader import read_lerobot
from qsft_robot.data.sources import open_dataset


def close(a, b, tol=4.0):
    return np.abs(a.astype(int) - b.astype(int)).mean() < tol


@pytest.mark.parametrize("images", ["video", "image"])
def test_v21(tmp_path, images):
    truth = build_v21(tmp_path / "ds", images=images)
    eps, info = read_lerobot(tmp_path / "ds")
    assert info["codebase_version"] == "v2.1" and len(eps) == 2
    for ep, (acts, imgs, task) in zip(eps, truth):
        np.testing.assert_array_equal(ep.actions, acts)
        np.testing.assert_array_equal(ep.state, acts * 2)
        assert ep.instruction == task
        if images == "image":
            np.testing.assert_array_equal(ep.images["top"], imgs)  # PNG is lossless
        else:
            assert close(ep.images["top"], imgs)


def test_v30_packed_episodes_are_found_by_timestamp(tmp_path):
    truth = build_v30(tmp_path / "ds")
    eps, _ = read_lerobot(tmp_path / "ds")
    assert len(eps) == 3
    for ep, (acts, imgs, task, success) in zip(eps, truth):
        np.testing.assert_array_equal(ep.actions, acts)
        assert close(ep.images["top"], imgs) and ep.instruction == task and ep.success == success
        # each episode's frames, not a neighbour's: the per-episode colours differ strongly
        assert np.abs(ep.images["top"].astype(int) - imgs.astype(int)).mean() < \
            np.abs(ep.images["top"].astype(int) - np.roll(imgs, 1, 0).astype(int)).mean() + 1


def test_frame_outside_tolerance_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    build_v30(tmp_path / "ds")
    p = tmp_path / "ds/meta/episodes/chunk-000/file-000.parquet"
    rows = pq.read_table(p).to_pylist()
    rows[2]["videos/observation.images.top/from_timestamp"] += 5.0  # past the end of the video
    pq.write_table(pa.Table.from_pylist(rows), p)
    with pytest.raises(DatasetError, match="episode 2.*tolerance"):
        read_lerobot(tmp_path / "ds")


def test_mismatched_episode_length_is_named(tmp_path):
    build_v21(tmp_path / "ds")
    p = tmp_path / "ds/meta/episodes.jsonl"
    lines = p.read_text().splitlines()
    row = json.loads(lines[1])
    row["length"] += 3
    lines[1] = json.dumps(row)
    p.write_text("\n".join(lines))
    with pytest.raises(DatasetError, match="episode 1: metadata says 10 frames"):
        read_lerobot(tmp_path / "ds")


def test_nan_frames_dropped_with_count_when_opted_in(tmp_path, caplog):
    import pyarrow.parquet as pq

    build_v21(tmp_path / "ds", images="image")
    p = tmp_path / "ds/data/chunk-000/episode_000001.parquet"
    t = pq.read_table(p).to_pydict()
    t["action"][3] = [float("nan")] * 3
    import pyarrow as pa
    pq.write_table(pa.table(t, schema=pq.read_schema(p)), p)
    with pytest.raises(DatasetError, match="episode 1.*NaN"):
        read_lerobot(tmp_path / "ds")
    eps, _ = read_lerobot(tmp_path / "ds", drop_nonfinite=True)
    assert len(eps[1]) == 6 and "dropped 1 frames" in caplog.text


@pytest.mark.parametrize("compress", [False, True])
def test_aloha(tmp_path, compress):
    imgs, qpos, action = build_aloha(tmp_path / "episode_0.hdf5", compress=compress)
    build_aloha(tmp_path / "episode_1.hdf5", compress=compress)
    eps = open_dataset(tmp_path, instruction="fold the towel").episodes()
    assert len(eps) == 2 and eps[0].instruction == "fold the towel"
    np.testing.assert_array_equal(eps[0].actions, action)
    np.testing.assert_array_equal(eps[0].state, qpos)
    for cam, im in imgs.items():
        if compress:
            assert close(eps[0].images[cam], im, tol=3.0)
        else:
            np.testing.assert_array_equal(eps[0].images[cam], im)


def test_aloha_missing_camera(tmp_path):
    build_aloha(tmp_path / "e.hdf5")
    with pytest.raises(DatasetError, match="cam_low"):
        read_aloha(tmp_path / "e.hdf5", image_keys=["cam_low"])


def test_empty_episode_is_named(tmp_path):
    import pyarrow.parquet as pq

    build_v21(tmp_path / "ds", images="image")
    p = tmp_path / "ds/data/chunk-000/episode_000001.parquet"
    t = pq.read_table(p)
    pq.write_table(t.slice(0, 0), p)
    lines = (tmp_path / "ds/meta/episodes.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    row["length"] = 0
    lines[1] = json.dumps(row)
    (tmp_path / "ds/meta/episodes.jsonl").write_text("\n".join(lines))
    with pytest.raises(DatasetError, match="episode 1: empty episode"):
        read_lerobot(tmp_path / "ds")


def test_robomimic_layout_built_by_hand(tmp_path):
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "low_dim.hdf5", "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})
        for i, T in enumerate((5, 3, 4)):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = T
            g.create_dataset("obs/agentview_image", data=rng.integers(0, 255, (T, 16, 16, 3), dtype=np.uint8))
            g.create_dataset("obs/robot_state", data=rng.normal(size=(T, 9)))
            g.create_dataset("actions", data=rng.normal(size=(T, 7)))
            g.create_dataset("rewards", data=np.r_[np.zeros(T - 1), float(i != 1)])
            g.create_dataset("dones", data=np.r_[np.zeros(T - 1), 1].astype(np.int64))
        f.create_dataset("mask/valid", data=np.array([b"demo_2"]))
    eps = open_dataset(tmp_path / "low_dim.hdf5", instruction="lift the cube").episodes()
    assert [len(e) for e in eps] == [5, 3, 4]
    assert [e.success for e in eps] == [True, False, True]
    assert eps[0].images["agentview"].shape == (5, 16, 16, 3) and eps[0].instruction == "lift the cube"
    valid = read_robomimic(tmp_path / "low_dim.hdf5", split="valid")
    assert len(valid) == 1 and len(valid[0]) == 4


def test_reward_rules_episode_list_and_all_success(tmp_path):
    from qsft_robot.data.action_tokenizer import ActionTokenizer
    from qsft_robot.data.transitions import build_transitions

    build_v21(tmp_path / "ds", images="image", lengths=(3, 4, 2))
    eps, _ = read_lerobot(tmp_path / "ds")
    tok = ActionTokenizer.fit(np.concatenate([e.actions for e in eps]), 8)
    tr = build_transitions(eps, tok, 0.9, "episodes:2")
    assert tr.reward.tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 1] and tr.reward_rule == "episodes:2"
    assert tr.done.tolist() == [False] * 8 + [True]
    # end_is_terminal: failed episodes end in a terminal 0 instead of bootstrapping through the time-out
    tr = build_transitions(eps, tok, 0.9, "episodes:2", end_is_terminal=True)
    assert tr.done.tolist() == [False, False, True, False, False, False, True, False, True]
    assert tr.reward.tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 1]
    tr = build_transitions(eps, tok, 0.9, "all_success")
    assert tr.reward.sum() == 3 and tr.done.sum() == 3
    with pytest.raises(DatasetError, match="episode indices"):
        build_transitions(eps, tok, 0.9, "episodes:one")


def test_lerobot_dataset_object_adapter(tmp_path):
    from types import SimpleNamespace

    from qsft_robot.data.lerobot_adapter import episodes_from_lerobot_dataset

    build_v30(tmp_path / "ds")
    ds = SimpleNamespace(root=tmp_path / "ds", meta=SimpleNamespace(root=tmp_path / "ds"), episodes=[0, 2])
    eps = episodes_from_lerobot_dataset(ds)
    assert [e.meta["episode_index"] for e in eps] == [0, 2]
    with pytest.raises(DatasetError, match="local `root`"):
        episodes_from_lerobot_dataset(SimpleNamespace(root=tmp_path / "nope"))
