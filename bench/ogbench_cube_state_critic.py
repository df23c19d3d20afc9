"""Is the 48-px frame what keeps the critic from learning the reach on OGBench's noisy logs? The benchmark's own
noisy task-1 dataset with the cube's position and yaw appended to the state (privileged: a diagnostic, not an
observation to deploy), then BC and the sigmoid critic trained on it with the product's CLI, and probed and
evaluated with the same pose in the env's state. docs/ogbench.md ("What the noisy logs ask of a critic") has the
numbers and the training commands.

    python bench/ogbench_cube_state_critic.py dataset SRC DST      # SRC: the benchmark's <task>/dataset
    python bench/ogbench_cube_state_critic.py probe BC_RUN [Q_RUN ...]

Why a replay instead of a new collection: the dataset's logs are seeds 0..N-1 of `collect` (episodes in seed
order), and the wheel's oracles draw from numpy's seeded global RNG, so each log replays exactly in the state-based
twin env without rendering (3 min for 100 logs instead of ~25). The replay's proprio must equal the dataset's
(checked to 1e-4, else nothing is written), so the frames, actions and cuts are the dataset's own.
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from ogbench_expert_bc import NOISY_TASK, cube_pose_features, patch_state  # noqa: E402


def replayed_states(logs: int) -> np.ndarray:
    """(frames, 10) states of the dataset's episodes in order: the product's 5-d proprio, then the cube's pose."""
    from tqdm import tqdm

    from qsft_robot.sim import ogbench_play as op
    from qsft_robot.sim.ogbench_tasks import parse_name

    spec = parse_name(NOISY_TASK)
    twin = replace(spec, play_env_id=spec.play_env_id.removeprefix("visual-"), render="upstream")
    out = []
    for seed in tqdm(range(logs), desc="replay noisy logs", unit="log"):
        log = op.play_log(twin, seed, 64, op.PLAY_STEPS, "noisy")
        u = op._cached_env(twin.play_env_id, 64, "upstream", terminate_at_goal=False, mode="data_collection",
                           max_episode_steps=op.PLAY_STEPS).unwrapped
        state = np.concatenate([log["proprio"], cube_pose_features(u, log["qpos"][:-1])], 1)
        eps = op.episodes_from_log(np.zeros((len(state), 1)), log["actions"], state,
                                   op.success_mask(spec, log["qpos"], None), "", "unused", {})
        out += [e.state for e in eps]
    return np.concatenate(out).astype(np.float32)


def write_dataset(src: Path, dst: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from qsft_robot.data.lerobot_writer import _stats

    logs = json.loads((src.parent / "dataset_spec.json").read_text())["episodes"]
    data = sorted((src / "data").rglob("*.parquet"))
    if len(data) != 1:
        raise SystemExit(f"{src}: expected the benchmark's one data file, found {len(data)}")
    tab = pq.read_table(data[0])
    old = np.stack(tab.column("observation.state").to_pylist()).astype(np.float32)
    state = replayed_states(logs)
    if state.shape[0] != old.shape[0] or np.abs(state[:, :old.shape[1]] - old).max() > 1e-4:
        raise SystemExit(f"the replay does not reproduce {src} ({state.shape[0]} vs {old.shape[0]} frames)")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    col = pa.array(state.tolist(), type=pa.list_(pa.float32()))
    tab = tab.set_column(tab.schema.get_field_index("observation.state"), "observation.state", col)
    pq.write_table(tab, dst / data[0].relative_to(src))
    info = json.loads((dst / "meta/info.json").read_text())
    info["features"]["observation.state"].update(shape=[state.shape[1]],
                                                 names=[f"s{k}" for k in range(state.shape[1])])
    (dst / "meta/info.json").write_text(json.dumps(info, indent=2))
    stats = json.loads((dst / "meta/stats.json").read_text())
    stats["observation.state"] = _stats(state)
    (dst / "meta/stats.json").write_text(json.dumps(stats))
    print(f"{dst}: {state.shape[0]} frames, state {old.shape[1]} -> {state.shape[1]} numbers (replay exact)")


def probe(a) -> None:
    patch_state("cube")   # before any env is built: the env's state carries the pose, as the dataset's does
    from ogbench_noisy_mixture import probe_and_evaluate

    probe_and_evaluate(a.bc, a.critics, a.episodes, "eval_cube_state", "the cube's pose in the state")


if __name__ == "__main__":
    from ogbench_noisy_mixture import dataset_probe_cli

    dataset_probe_cli(lambda a: write_dataset(a.src, a.dst), probe)
