"""The data front door: every supported layout is found without a format flag, inspected with its exact
name and trained on through `qsft-robot`; an unknown layout is refused with the list of formats."""
from __future__ import annotations

import json

import numpy as np
import pytest
from lerobot_fixtures import build_aloha, build_v21, build_v30

from qsft_robot.cli import main
from qsft_robot.data.episode import DatasetError, Episode
from qsft_robot.data.hdf5_io import write_robomimic
from qsft_robot.data.sources import detect_format, open_dataset


def _robomimic(path):
    rng = np.random.default_rng(0)
    eps = [Episode(images={"agentview": rng.integers(0, 255, (T, 32, 32, 3), dtype=np.uint8)},
                   actions=rng.normal(size=(T, 3)).astype(np.float32), instruction="lift the cube",
                   state=rng.normal(size=(T, 3)).astype(np.float32), success=bool(i % 2), terminated=bool(i % 2))
           for i, T in enumerate((4, 5, 3))]
    write_robomimic(eps, path)


def _aloha_folder(root):
    root.mkdir()
    for i in range(3):
        build_aloha(root / f"episode_{i}.hdf5", compress=i == 1)


LAYOUTS = {  # name -> (builder, path inside tmp, label, episodes, cameras)
    "lerobot_v30": (lambda p: build_v30(p), "ds", "LeRobot v3.0", 3, ["top"]),
    "lerobot_v21": (lambda p: build_v21(p), "ds", "LeRobot v2.1", 2, ["top"]),
    "robomimic": (_robomimic, "demo.hdf5", "robomimic HDF5", 3, ["agentview"]),
    "aloha_file": (lambda p: build_aloha(p), "episode_0.hdf5", "ALOHA episode file", 1, ["cam_high", "cam_left_wrist"]),
    "aloha_folder": (_aloha_folder, "aloha", "ALOHA episode folder", 3, ["cam_high", "cam_left_wrist"]),
}


@pytest.fixture(params=sorted(LAYOUTS))
def layout(request, tmp_path):
    build, name, label, n, cams = LAYOUTS[request.param]
    build(tmp_path / name)
    return tmp_path / name, label, n, cams


def test_inspect_names_the_format_without_a_flag(layout, capsys):
    path, label, n, cams = layout
    assert detect_format(path).label == label
    assert main(["data", "inspect", str(path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"{path}: {label}, {n} episodes, cameras: {', '.join(cams)}"
    assert main(["data", "inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == label and report["episodes"] == n and sorted(report["cameras"]) == cams


def test_train_finds_the_format(layout, tmp_path):
    path, label, n, cams = layout
    out = tmp_path / "run"
    assert main(["train", f"data.path={path}", "--out", str(out), "--algo", "sft", "--set", "train.steps=1",
                 "--set", "train.batch_size=4", "--set", "algo.num_bins=8", "--set", "train.tensorboard=false",
                 "--set", "data.instruction=fold the towel", "--set", "data.reward=all_success",
                 "--set", f"data.feature_cache={tmp_path / 'cache'}"]) == 0
    assert (out / "checkpoints" / "step-00000001" / "model").is_dir()
    streamed = (tmp_path / "cache" / "frames").is_dir()
    assert streamed == label.startswith("LeRobot")  # LeRobot streams into a frame memmap, HDF5 is read whole


def test_unknown_folder_lists_the_formats(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(DatasetError) as e:
        open_dataset(tmp_path / "notes")
    for looked_for in ("LeRobot", "robomimic", "ALOHA episode file", "ALOHA episode folder"):
        assert looked_for in str(e.value)
    assert main(["data", "inspect", str(tmp_path / "notes")]) == 2
    assert "looked for" in capsys.readouterr().err
    (tmp_path / "x.hdf5").write_text("not hdf5")
    with pytest.raises(DatasetError, match="looked for"):
        detect_format(tmp_path / "x.hdf5")
    with pytest.raises(DatasetError, match="dataset not found"):
        detect_format(tmp_path / "missing")


def test_a_format_flag_is_checked_against_the_data(tmp_path):
    from qsft_robot.config import DATA_FORMATS
    from qsft_robot.data.sources import ALOHA, LEROBOT, ROBOMIMIC

    assert set(DATA_FORMATS) == {"auto", "hdf5", LEROBOT, ROBOMIMIC, ALOHA}  # one declaration, in config.py
    _robomimic(tmp_path / "d.hdf5")
    assert detect_format(tmp_path / "d.hdf5", "hdf5").format == "robomimic"
    assert detect_format(tmp_path / "d.hdf5", "robomimic").label == "robomimic HDF5"
    with pytest.raises(DatasetError, match="data.format=lerobot, but this is a robomimic HDF5"):
        detect_format(tmp_path / "d.hdf5", "lerobot")
    with pytest.raises(DatasetError, match="'parquet' is not one of auto, lerobot, robomimic, aloha, hdf5"):
        detect_format(tmp_path / "d.hdf5", "parquet")


def test_a_checkpoint_records_the_datasets_action_names(tmp_path):
    """LeRobot's features.action.names reach the checkpoint (action_tokenizer.json), where the ROS node
    compares them with a robot profile's joints; a dataset without names records none."""
    from qsft_robot.data.action_tokenizer import ActionTokenizer
    from qsft_robot.data.lerobot_writer import write_lerobot_v30

    rng = np.random.default_rng(0)
    eps = [Episode(images={"top": rng.integers(0, 255, (T, 32, 32, 3), dtype=np.uint8)},
                   actions=rng.normal(size=(T, 2)).astype(np.float32), instruction="go", success=True,
                   terminated=True) for T in (4, 5)]
    write_lerobot_v30(eps, tmp_path / "named", fps=10)
    build_v21(tmp_path / "unnamed")
    for data, want in (("named", ["a0", "a1"]), ("unnamed", None)):
        out = tmp_path / f"run_{data}"
        assert main(["train", f"data.path={tmp_path / data}", "--out", str(out), "--algo", "sft", "--set",
                     "train.steps=1", "--set", "train.batch_size=4", "--set", "algo.num_bins=8", "--set",
                     "train.tensorboard=false", "--set", "data.reward=all_success"]) == 0
        tok = ActionTokenizer.load(out / "checkpoints" / "step-00000001" / "action_tokenizer.json")
        assert tok.names == want
