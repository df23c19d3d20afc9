"""Training straight from a LeRobot folder: frames streamed once into a memmap, loader workers."""
from __future__ import annotations

import pickle

import numpy as np
import torch

from qsft_robot.config import load_config
from qsft_robot.data.feature_cache import FeatureStore
from qsft_robot.data.image_store import MemmapImageStore
from qsft_robot.data.lerobot_reader import read_lerobot
from qsft_robot.data.lerobot_writer import write_lerobot_v30
from qsft_robot.sim.collect import collect_episodes
from qsft_robot.train.trainer import Trainer


def test_memmap_store_matches_decoded_frames_and_workers_match_inline(tmp_path):
    write_lerobot_v30(collect_episodes("arm_reach", 6, "mixed", seed=0), tmp_path / "ds", fps=10)
    decoded = np.concatenate([np.stack([e.images["wrist"]], 1) for e in read_lerobot(tmp_path / "ds")[0]])

    def run(name, workers):
        cfg = load_config(None, [f"data.path={tmp_path / 'ds'}", f"train.out_dir={tmp_path / name}",
                                 "train.steps=3", "train.batch_size=6", "algo.num_bins=16",
                                 f"train.num_workers={workers}", "train.save_every=100"])
        tr = Trainer(cfg)
        tr.train()
        return tr

    inline = run("inline", 0)
    assert isinstance(inline.frames, MemmapImageStore)
    np.testing.assert_array_equal(inline.frames[np.arange(len(decoded))], decoded)
    # the frozen tower trains on cached features, memmapped too; both stores pickle by path (what
    # DataLoader workers receive), not by content
    assert isinstance(inline.data.images, FeatureStore) and len(inline.data.images) == len(decoded)
    assert len(pickle.dumps(inline.frames)) < 2000 and len(pickle.dumps(inline.data.images)) < 2000
    workers = run("workers", 2)
    for a, b in zip(inline.model.parameters(), workers.model.parameters()):
        assert torch.equal(a, b)
    # one decoded copy in the shared cache, not one per run: the second run read the first one's, and a third
    # (another algorithm, another run folder) decodes nothing either
    assert workers.frames.folder == inline.frames.folder
    assert inline.frames.folder.parent.name == "frames" and not (tmp_path / "inline" / "frame_cache").exists()
    mtime = (inline.frames.folder / "frames.u8").stat().st_mtime_ns
    third = Trainer(load_config(None, [f"data.path={tmp_path / 'ds'}", f"train.out_dir={tmp_path / 'q'}",
                                       "algo.name=qsft", "train.steps=3", "train.batch_size=6", "algo.num_bins=16"]))
    assert third.frames.folder == inline.frames.folder
    assert (inline.frames.folder / "frames.u8").stat().st_mtime_ns == mtime


def test_filtered_bc_streams_only_successful_episodes(tmp_path):
    eps = collect_episodes("arm_reach", 8, "mixed", seed=0)
    assert 0 < sum(e.success for e in eps) < len(eps)   # both kinds, so the two caches hold different episodes
    write_lerobot_v30(eps, tmp_path / "ds", fps=10)
    tr = Trainer(load_config(None, [f"data.path={tmp_path / 'ds'}", f"train.out_dir={tmp_path / 'r'}",
                                    "algo.name=filtered_bc", "train.steps=1", "algo.num_bins=16"]))
    assert len(tr.data) == sum(len(e) for e in eps if e.success)
    assert len(tr.data.images) == len(tr.data)
    # other episodes, another cache folder: BC's full copy is not mistaken for this one
    bc = Trainer(load_config(None, [f"data.path={tmp_path / 'ds'}", f"train.out_dir={tmp_path / 'bc'}",
                                    "algo.name=sft", "train.steps=1", "algo.num_bins=16"]))
    assert bc.frames.folder != tr.frames.folder and len(bc.frames) == sum(len(e) for e in eps)
