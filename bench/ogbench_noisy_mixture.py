"""Why BC on OGBench's noisy random-task logs never reaches the cube, and whether a Q-SFT critic learns to: three
measurements on `ogbench/visual-cube-single-noisy-singletask-task1-v0@lite`. docs/ogbench.md ("What the noisy logs
ask of a critic") has the numbers.

    python bench/ogbench_noisy_mixture.py --logs 8                                   # 1. the logs alone
    python bench/ogbench_noisy_mixture.py --logs 0 --bc RUN [RUN ...]                # 2. BC policies vs the oracle
    python bench/ogbench_noisy_mixture.py --logs 0 --critic RUN [RUN ...]            # 3. Q-SFT critics

1. The logs: with the cube on the table and the gripper not holding it, which way does the logged xy action point,
   toward the cube or away, by the gripper's distance from it? The Markov oracle ends every random task by moving
   the open gripper from the released cube to a random pose (its phases 8-9), and starts the next by moving it back
   (phase 1); which of the two a frame belongs to depends on the task's random target, which no frame shows. So the
   logged action at a pose is a mixture of "to the cube" and "away from it".
2. BC policies (or Q-SFT runs, acting as they are evaluated), on the evaluation's own start states (held-out
   seeds), along the noise-free Markov oracle's rollout of task 1: how often each action dimension has the oracle's
   sign, per phase of the rollout.
3. Q-SFT critics, on the same states: Q (algo.critic: p_theta / pi_beta, the Q-SFT fixed point p_theta = pi_beta * Q,
   or the bin's sigmoid) of the oracle's action ("toward": its x and y) against the same action with x and y
   reversed ("away"), per dimension, each scored after the oracle's earlier dimensions. An improving critic ranks
   toward above away; a critic of pi_beta's own value (SARSA) need not, as every log goes back to the cube sooner
   or later.

Held-out evaluation seeds only (5000 on): the numbers here steered the experiments.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import table  # noqa: E402
from ogbench_expert_bc import NOISY_TASK, cube_qpos_address, patch_oracle  # noqa: E402

DIST_BINS = [(0.0, 0.03), (0.03, 0.06), (0.06, 0.10), (0.10, 0.15), (0.15, 0.25), (0.25, 1.0)]
PHASES = [(0, 15), (15, 40), (40, 200)]
DIMS = ["x", "y", "z", "yaw", "grip"]


def log_mixture(n_logs: int) -> None:
    from qsft_robot.sim.ogbench_play import PLAY_STEPS, _cached_env, parse_name, play_log
    from qsft_robot.sim.ogbench_tasks import XYZ_CENTER, XYZ_SCALE

    spec = parse_name(NOISY_TASK)
    # seeds no benchmark dataset collects (those start at 0)
    logs = [play_log(spec, seed, 64, PLAY_STEPS, "noisy") for seed in range(100, 100 + n_logs)]
    # the env play_log collected them in (its model exists once it has been reset)
    i = cube_qpos_address(_cached_env(spec.play_env_id, 64, spec.render, terminate_at_goal=False,
                                      mode="data_collection", max_episode_steps=PLAY_STEPS).unwrapped)
    rows = []
    for log in logs:
        cube = log["qpos"][:-1, i:i + 3]
        grip_xy = (log["proprio"][:, :2] / XYZ_SCALE + XYZ_CENTER[:2])
        d = cube[:, :2] - grip_xy
        dist = np.linalg.norm(d, axis=1)
        a = log["actions"][:, :2]
        cos = (d * a).sum(1) / (dist * np.linalg.norm(a, axis=1) + 1e-9)
        keep = (cube[:, 2] < 0.04) & (np.linalg.norm(a, axis=1) > 0.2)   # cube on the table, the gripper moving
        rows.append(np.c_[dist, cos][keep])
    r = np.concatenate(rows)
    out = []
    for lo, hi in DIST_BINS:
        m = (r[:, 0] >= lo) & (r[:, 0] < hi)
        toward, away = np.mean(r[m, 1] > 0.5), np.mean(r[m, 1] < -0.5)
        out.append([f"{lo:.2f}-{hi:.2f}", int(m.sum()), f"{toward:.2f}", f"{away:.2f}"])
    table(f"{n_logs} noisy logs of {NOISY_TASK} (seeds from 100): the logged xy action with the cube on the table",
          ["gripper-cube xy distance (m)", "steps", "toward the cube (cos > 0.5)", "away (cos < -0.5)"], out)


def oracle_states(episodes: int, steps: int):
    """The noise-free Markov oracle's rollouts of task 1 from held-out start states: frames, instructions,
    states, the oracle's actions and each step's index in its episode."""
    from qsft_robot.sim.registry import make_task

    patch_oracle("markov")
    imgs, ins, sts, acts, t_idx = [], [], [], [], []
    for seed in range(5000, 5000 + episodes):
        task = make_task(NOISY_TASK)
        obs, _ = task.reset(seed=seed)
        for t in range(steps):
            a = task.expert_action()
            imgs.append(np.stack([obs["images"][task.camera]]))
            ins.append(obs["instruction"])
            sts.append(obs["state"])
            acts.append(a)
            t_idx.append(t)
            obs, _, term, trunc, _ = task.step(a)
            if term or trunc:
                break
        task.close()
    return np.stack(imgs), ins, np.stack(sts), np.stack(acts), np.array(t_idx)


def bc_agreement(runs: list[str], episodes: int) -> None:
    from qsft_robot.algo.policy import load_policy

    imgs, ins, sts, acts, t_idx = oracle_states(episodes, 200)
    rows = []
    for run in runs:
        pol = load_policy(run)
        pred = np.concatenate([pol.act(imgs[k:k + 50], ins[k:k + 50], sts[k:k + 50]) for k in range(0, len(ins), 50)])
        for lo, hi in PHASES:
            m = (t_idx >= lo) & (t_idx < hi)
            big = np.abs(acts[m]) > 0.3
            agree = [(np.sign(pred[m, d]) == np.sign(acts[m, d]))[big[:, d]].mean() if big[:, d].any() else np.nan
                     for d in range(len(DIMS))]
            rows.append([run, f"{lo}-{hi}", int(m.sum()), *(f"{x:.2f}" for x in agree)])
    table(f"BC's action vs the Markov oracle's along its rollouts of task 1 (held-out seeds 5000-{4999 + episodes}): "
          "share of steps with the oracle's sign, where |oracle| > 0.3", ["policy", "steps", "n", *DIMS], rows)


def goal_xy() -> np.ndarray:
    """The evaluation task's goal position of the cube (x, y), from the env's target marker after a reset."""
    from qsft_robot.sim.registry import make_task

    task = make_task(NOISY_TASK)
    task.reset(seed=5000)
    u = task.env.unwrapped
    xy = np.array(u._data.mocap_pos[u._cube_target_mocap_ids[0]][:2])
    task.close()
    return xy


def chunk_tokens(tokenizer, actions: np.ndarray, t_idx: np.ndarray) -> np.ndarray:
    """Tokens of each state's next `tokenizer.chunk` actions along its own rollout (rollouts are concatenated;
    a new one starts where t_idx is 0), as training reads a log (ActionTokenizer.encode_chunks)."""
    starts = np.flatnonzero(t_idx == 0)
    return np.concatenate([tokenizer.encode_chunks(part) for part in np.split(actions, starts[1:])])


def critic_preference(runs: list[str], episodes: int) -> None:
    from qsft_robot.algo.policy import load_policy
    from qsft_robot.algo.qvalues import logged_q_values
    from qsft_robot.sim.ogbench_tasks import XYZ_CENTER, XYZ_SCALE

    imgs, ins, sts, acts, t_idx = oracle_states(episodes, 15)   # the reach: the first 15 steps
    gripper = sts[:, :2] / XYZ_SCALE + XYZ_CENTER[:2]
    to_goal = np.sign(goal_xy() - gripper) == np.sign(acts[:, :2])   # toward the cube is toward the goal too
    away = acts.copy()
    away[:, :2] *= -1     # a chunked critic: every step of the chunk reversed in x and y
    rows = []
    for run in runs:
        pol = load_policy(run)
        if pol.behavior_model is None:
            raise SystemExit(f"{run}: not a Q-SFT run with its pi_beta (behavior/)")
        p, q = {}, {}
        for kind, a in [("toward", acts), ("away", away)]:
            q_kind, p_kind = logged_q_values(pol, imgs, ins, sts, chunk_tokens(pol.action_tokenizer, a, t_idx))
            q[kind], p[kind] = q_kind.numpy(), p_kind.numpy()
        for d in (0, 1):
            m = np.abs(acts[:, d]) > 0.3
            q_t, q_a = q["toward"][m, d], q["away"][m, d]
            b_pref = np.mean(p["toward"][m, d] > p["away"][m, d])
            split = []
            for sel in (m & to_goal[:, d], m & ~to_goal[:, d]):
                pref = np.mean(q["toward"][sel, d] > q["away"][sel, d]) if sel.any() else np.nan
                split.append(f"{pref:.2f} (n {int(sel.sum())})")
            rows.append([run, DIMS[d], int(m.sum()), f"{b_pref:.2f}", f"{np.mean(q_t > q_a):.2f}",
                         f"{q_t.mean():.3f}", f"{q_a.mean():.3f}", *split])
        if pol.chunk > 1:   # the chunk's last token: Q of the whole chunk (every step's x and y reversed for "away")
            m = (np.abs(acts[:, :2]) > 0.3).any(1)
            q_t, q_a = q["toward"][m, -1], q["away"][m, -1]
            rows.append([run, f"all {pol.chunk} steps", int(m.sum()), "", f"{np.mean(q_t > q_a):.2f}",
                         f"{q_t.mean():.3f}", f"{q_a.mean():.3f}", "", ""])
    table(f"Q-SFT critics at the reach states of task 1 (first 15 oracle steps, held-out seeds 5000-{4999 + episodes})",
          ["run", "dim", "n", "pi_beta prefers toward", "Q prefers toward", "mean Q toward", "mean Q away",
           "Q prefers toward: the goal's way too", "the goal the other way"], rows)


def probe_and_evaluate(bc: str, critics: list[str], episodes: int, eval_name: str, title: str,
                       before_eval=lambda: None) -> None:
    """The BC (and critic-acting) agreement and the critics' reach preference at single env steps, then each run
    closed loop from held-out seed 5000 (before_eval: what the closed loop changes, e.g. actions held)."""
    from qsft_robot.algo.policy import load_policy
    from qsft_robot.sim.evaluate import evaluate

    bc_agreement([bc, *critics], 20)
    if critics:
        critic_preference(critics, 20)
    before_eval()
    rows = []
    for run in [bc, *critics]:
        s = evaluate(load_policy(run), NOISY_TASK, episodes=episodes, seed=5000, num_envs=10, videos=2,
                     out_dir=Path(run) / eval_name)
        rows.append([run, f"{s['success_rate']:.2f}", s["episodes"]])
    table(f"Closed loop, {title} (held-out seeds 5000-{4999 + episodes})", ["run", "success", "n"], rows)


def write_derived_dataset(src: Path, dst: Path, transform, fps_scale: float = 1.0, what: str = "") -> None:
    """The LeRobot dataset at src rewritten to dst with every episode passed through transform(episode)."""
    from qsft_robot.data.lerobot_reader import iter_lerobot, read_info
    from qsft_robot.data.lerobot_writer import write_lerobot_v30

    info = read_info(src)
    out = write_lerobot_v30((transform(e) for e in iter_lerobot(src)), dst, fps=info["fps"] * fps_scale,
                            robot_type=info.get("robot_type", "qsft_sim"))
    print(f"{out}: {info['total_frames']} steps{what}")


def dataset_probe_cli(write_dataset, probe=None, add_args=lambda parser: None) -> None:
    """`dataset SRC DST` / `probe BC [Q ...] --episodes N` of the scripts that derive a dataset from the
    benchmark's noisy one (no `probe` where a script has none); add_args adds a script's own options to both."""
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dataset")
    d.add_argument("src", type=Path)
    d.add_argument("dst", type=Path)
    parsers = [d]
    if probe is not None:
        p = sub.add_parser("probe")
        p.add_argument("bc")
        p.add_argument("critics", nargs="*")
        p.add_argument("--episodes", type=int, default=50)
        parsers.append(p)
    for q in parsers:
        add_args(q)
    a = ap.parse_args()
    from qsft_robot.config import setup_logging
    setup_logging("WARNING")
    write_dataset(a) if a.cmd == "dataset" else probe(a)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--logs", type=int, default=8, help="noisy logs to measure (0: none)")
    ap.add_argument("--bc", nargs="*", default=[], help="BC run or checkpoint folders")
    ap.add_argument("--critic", nargs="*", default=[], help="Q-SFT run or checkpoint folders")
    ap.add_argument("--episodes", type=int, default=20, help="held-out start states (seeds from 5000)")
    a = ap.parse_args()
    from qsft_robot.config import setup_logging
    setup_logging("WARNING")
    if a.logs:
        log_mixture(a.logs)
    if a.bc:
        bc_agreement(a.bc, a.episodes)
    if a.critic:
        critic_preference(a.critic, a.episodes)


if __name__ == "__main__":
    main()
