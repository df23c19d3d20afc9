"""LeRobot v3.0 as real logs are: many episodes per data parquet and MP4, frames decoded per episode by
seeking, `data inspect` without video, and damage in the middle of a file named by episode."""
from __future__ import annotations

import json
import shutil

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from test_lerobot_writer import make_episodes

from qsft_robot.cli import main
from qsft_robot.data.episode import DatasetError, Episode
from qsft_robot.data.inspect import inspect_dataset
from qsft_robot.data.lerobot_reader import LeRobotReader, read_lerobot
from qsft_robot.data.lerobot_writer import _histogram_stats, _stats, write_lerobot_v30
from qsft_robot.data.sources import open_dataset
from qsft_robot.data.video import VideoReader

FPS, T = 10, 8
VIDEO = "videos/observation.images.front/chunk-000/file-000.mp4"


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """Five episodes of 8 frames in one MP4 and one parquet, and what our reader decodes from them."""
    eps = make_episodes(5, T=T)
    root = write_lerobot_v30(eps, tmp_path_factory.mktemp("packed") / "ds", fps=FPS)
    return root, eps, read_lerobot(root)[0]


def _copy(packed, tmp_path):
    return shutil.copytree(packed[0], tmp_path / "ds")


def _packets(path):
    """(time, byte offset, size) of every video packet in the file."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [(float(p.pts * s.time_base), p.pos, p.size) for p in c.demux(s) if p.size]


def test_episodes_per_file_round_trip(tmp_path):
    eps = make_episodes(7, T=6)
    root = write_lerobot_v30(eps, tmp_path / "ds", fps=FPS, episodes_per_file=3)
    rows = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [r["data/file_index"] for r in rows] == [0, 0, 0, 1, 1, 1, 2]
    assert [r["videos/observation.images.front/file_index"] for r in rows] == [0, 0, 0, 1, 1, 1, 2]
    # each file's clock starts at 0; the dataset's frame index runs on across files
    assert [round(r["videos/observation.images.front/from_timestamp"], 6) for r in rows] == \
        [0, 0.6, 1.2, 0, 0.6, 1.2, 0]
    assert [r["dataset_from_index"] for r in rows] == [6 * i for i in range(7)]
    for k in range(3):
        assert (root / f"data/chunk-000/file-{k:03d}.parquet").is_file()
        assert (root / f"videos/observation.images.front/chunk-000/file-{k:03d}.mp4").is_file()
    back, info = read_lerobot(root)
    assert info["total_episodes"] == 7 and info["total_frames"] == 42
    for a, b in zip(eps, back):
        np.testing.assert_array_equal(a.actions, b.actions)
        assert a.instruction == b.instruction and a.success == b.success
        assert np.abs(a.images["front"].astype(int) - b.images["front"].astype(int)).mean() < 3.0
    # the default stays one file of each
    single = write_lerobot_v30(eps, tmp_path / "single", fps=FPS)
    assert sorted(p.name for p in (single / "data/chunk-000").iterdir()) == ["file-000.parquet"]


def test_writer_takes_a_generator_and_names_a_mismatched_episode(tmp_path):
    eps = make_episodes(3, T=5)
    write_lerobot_v30((e for e in eps), tmp_path / "gen", fps=FPS)
    assert len(read_lerobot(tmp_path / "gen")[0]) == 3
    odd = Episode(images={"front": np.zeros((5, 16, 16, 3), np.uint8)}, actions=eps[0].actions,
                  instruction="x", state=eps[0].state)
    with pytest.raises(DatasetError, match="episode 2: cameras"):
        write_lerobot_v30(iter([eps[0], eps[1], odd]), tmp_path / "bad", fps=FPS)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.tmp-*"))


def test_image_stats_from_counts_equal_stats_over_every_pixel():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(997, 3)).astype(np.uint8)
    counts = np.stack([np.bincount(pixels[:, c], minlength=256) for c in range(3)])
    direct, from_counts = _stats(pixels / 255.0), _histogram_stats(counts)
    for k, v in direct.items():
        got = from_counts[k] if k == "count" else [x[0][0] for x in from_counts[k]]
        np.testing.assert_allclose(got, v, rtol=0, atol=1e-12, err_msg=k)


def test_seeking_reads_equal_in_order_reads_and_decode_only_their_range(packed):
    root, _, in_order = packed
    reader = LeRobotReader(root)
    for em in reversed(reader.metas):  # every read seeks backwards
        np.testing.assert_array_equal(reader.episode(em).images["front"], in_order[em["episode_index"]].images["front"])
    reader.close()
    with av.open(str(root / VIDEO)) as c:  # the reference: every frame, decoded from the start
        whole = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert len(whole) == 5 * T
    stamps = 2 * T / FPS + np.arange(T) / FPS  # episode 2
    with VideoReader(root / VIDEO) as video:
        np.testing.assert_array_equal(video.frames_at(stamps, 1e-3), whole[2 * T:3 * T])
        assert video.last_time <= stamps[-1] + 1e-6  # stopped at the episode's last frame, not the file's
        # a subset in any order gets the nearest frames, in the order asked
        np.testing.assert_array_equal(video.frames_at(stamps[[5, 1]], 1e-3), whole[[2 * T + 5, 2 * T + 1]])


def test_frame_chunks_are_bounded_and_follow_the_episodes_asked_for(packed):
    root, _, in_order = packed
    chunks = list(open_dataset(root).iter_frame_chunks([4, 1], chunk_bytes=3 * 32 * 32 * 3 + 100))
    assert [len(c) for c in chunks] == [3, 3, 2, 3, 3, 2]
    want = np.concatenate([in_order[4].images["front"], in_order[1].images["front"]])[:, None]
    np.testing.assert_array_equal(np.concatenate(chunks), want)


def test_inspect_reads_no_video_and_reports_as_before(packed, tmp_path):
    root, _, in_order = packed
    report = inspect_dataset(root)
    # the report as computed from fully decoded episodes
    acts = np.concatenate([e.actions for e in in_order])
    assert report["cameras"] == {"front": list(in_order[0].images["front"].shape[1:])}
    assert report["frames"] == 5 * T and report["episodes"] == 5
    assert report["action_q01"] == np.quantile(acts, 0.01, 0).round(4).tolist()
    assert report["success_rate"] == np.mean([e.success for e in in_order]) and report["problems"] == []
    assert "decoded" not in report and report["text"].splitlines()[-1] == "problems: none"
    ds = _copy(packed, tmp_path)
    shutil.rmtree(ds / "videos")
    without_video = inspect_dataset(ds)
    assert {k: v for k, v in without_video.items() if k not in ("path", "text")} == \
        {k: v for k, v in report.items() if k not in ("path", "text")}
    decoded = inspect_dataset(ds, decode=True)
    assert decoded["decoded"]["episodes"] == 0 and len(decoded["problems"]) == 5
    assert all(f"episode {e}: missing video file" in p for e, p in enumerate(decoded["problems"]))


def test_corrupt_bytes_in_the_middle_of_a_file_name_the_episode(packed, tmp_path, capsys):
    ds = _copy(packed, tmp_path)
    video = ds / VIDEO
    data = bytearray(video.read_bytes())
    rng = np.random.default_rng(0)
    start = 2 * T / FPS
    # episode 2's frames 0..5. Its first packet is sent to the decoder before episode 1's last frame comes
    # out, and episode 3's read seeks into episode 2: neither may be blamed for it
    for t, pos, size in _packets(video):
        if start - 0.05 < t < start + 0.55:
            data[pos:pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    video.write_bytes(bytes(data))
    reader = LeRobotReader(ds)
    for em in reader.metas:
        e = em["episode_index"]
        if e == 2:
            with pytest.raises(DatasetError, match=r"episode 2: unreadable video .*file-000\.mp4: corrupt video"):
                reader.episode(em)
        else:
            np.testing.assert_array_equal(reader.episode(em).images["front"], packed[2][e].images["front"])
    assert main(["data", "inspect", str(ds), "--strict"]) == 0  # tables only: no video read
    capsys.readouterr()
    assert main(["data", "inspect", str(ds), "--decode", "--strict", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert len(report["problems"]) == 1 and "episode 2: unreadable video" in report["problems"][0]
    assert report["decoded"]["episodes"] == 4 and report["decoded"]["frames"] == 4 * T


def test_truncated_file_names_the_first_episode_past_the_cut(packed, tmp_path):
    ds = _copy(packed, tmp_path)
    video = ds / VIDEO
    cut = next(pos for t, pos, _ in _packets(video) if t >= 3 * T / FPS + 0.35)  # inside episode 3
    video.write_bytes(video.read_bytes()[:cut])
    reader = LeRobotReader(ds)
    metas = reader.metas
    for e in range(3):
        np.testing.assert_array_equal(reader.episode(metas[e]).images["front"], packed[2][e].images["front"])
    for e in (3, 4):
        with pytest.raises(DatasetError, match=rf"episode {e}: unreadable video .*file-000\.mp4: .*truncated"):
            reader.episode(metas[e])


def test_inspect_of_images_stored_in_the_parquet(tmp_path):
    """v2.1/v3.0 image features (PNG bytes in the data parquet): the table pass leaves those columns unread,
    `--decode` decodes every cell."""
    from lerobot_fixtures import build_v21

    build_v21(tmp_path / "ds", images="image", lengths=(5, 7))
    report = inspect_dataset(tmp_path / "ds")
    assert report["cameras"] == {"top": [32, 32, 3]} and report["frames"] == 12 and report["problems"] == []
    decoded = inspect_dataset(tmp_path / "ds", decode=True)
    assert decoded["decoded"]["frames"] == 12 and decoded["problems"] == []
