"""Upstream `lerobot` reads what this project writes: the same actions, the same frames, episode by episode,
from a dataset with several episodes per data file and MP4.

Needs the `lerobot` extra, which pins its own torch (and PyAV) apart from this project's, so it lives in
its own environment and CI does not install it: see docs/data.md.
"""
from __future__ import annotations

import numpy as np
import pytest

lerobot_dataset = pytest.importorskip(
    "lerobot.datasets.lerobot_dataset",
    reason="upstream lerobot is not installed (the `lerobot` extra; it pins its own torch, see docs/data.md)")

from test_lerobot_writer import make_episodes  # noqa: E402

from qsft_robot.data.lerobot_reader import read_lerobot  # noqa: E402
from qsft_robot.data.lerobot_writer import write_lerobot_v30  # noqa: E402


def test_upstream_reads_our_multi_file_dataset(tmp_path):
    eps = make_episodes(5, T=6)
    root = write_lerobot_v30(eps, tmp_path / "ds", fps=10, episodes_per_file=2)
    ours, _ = read_lerobot(root)
    ds = lerobot_dataset.LeRobotDataset("local/qsft_robot_round_trip", root=root, video_backend="pyav")
    assert ds.num_episodes == 5 and ds.num_frames == sum(len(e) for e in eps)
    i = 0
    for e, (ep, back) in enumerate(zip(eps, ours)):
        for t in range(len(ep)):
            item = ds[i]
            assert int(item["episode_index"]) == e and int(item["frame_index"]) == t
            np.testing.assert_array_equal(item["action"].numpy(), ep.actions[t])
            np.testing.assert_array_equal(item["observation.state"].numpy(), ep.state[t])
            frame = (item["observation.images.front"].permute(1, 2, 0).numpy() * 255).round().astype(int)
            # both decode the same H.264 frame: equal up to the RGB conversion's rounding
            assert np.abs(frame - back.images["front"][t].astype(int)).max() <= 2
            assert np.abs(frame - ep.images["front"][t].astype(int)).mean() < 3.0
            assert item["task"] == ep.instruction
            i += 1
