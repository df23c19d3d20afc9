"""Can the policy imitate a perfect operator on an OGBench task at all? BC on the evaluation task's own noise-free
oracle demos, optionally with more in the state than the product's observation gives, evaluated closed loop on
held-out and on the training episodes' seeds. docs/ogbench.md ("Results") has the numbers.

    python bench/ogbench_expert_bc.py --extra-state none           # pixels + proprio, as the product
    python bench/ogbench_expert_bc.py --extra-state cube           # + the cube's position and yaw (privileged)
    python bench/ogbench_expert_bc.py --extra-state prev_action    # + the previous action
    python bench/ogbench_expert_bc.py --oracle markov --extra-state cube   # a state-feedback operator instead
    python bench/ogbench_expert_bc.py --oracle markov_noisy     # the same with the noisy logs' operator noise
    python bench/ogbench_expert_bc.py --data noisy --demos 200 --log-steps 200 --steps 4000 --episodes 50   # short logs
    python bench/ogbench_expert_bc.py --data noisy --demos 40 --steps 4000 --extra-state cube   # random-task logs

Why --oracle markov: the product's expert (and the play data) is the wheel's plan oracle, whose action is a function
of the time since its plan started and of keyframes it drew at random (pick height, a clearance waypoint), not of
what the camera sees; the wheel's Markov oracle (upstream's `noisy` datasets) acts on the current state alone. If BC
imitates the one and not the other, the observation lacks the plan, not the policy the capacity.

Why --data noisy: BC on the benchmark's noisy logs (random tasks, the cube anywhere) never goes to the cube, while
BC on demos of the task (the cube always near the same start) does; with the cube's pose in the state, what is left
is whether the pixels show where the cube is. Only held-out episodes then: the logs' seeds start no evaluation.

Why the extra state is patched into the task class here instead of being a product option: it is a diagnostic of
what the observation lacks, not an observation anyone should deploy (the cube's pose is not measured on a robot).
Everything runs in this one process (collection workers 1), so the patched class is the one every env uses.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, table  # noqa: E402

TASK = "ogbench/visual-cube-single-play-singletask-task1-v0@lite"
NOISY_TASK = "ogbench/visual-cube-single-noisy-singletask-task1-v0@lite"


def cube_qpos_address(u) -> int:
    """Where the cube's free joint (position, then quaternion w, x, y, z) starts in qpos of the unwrapped env u."""
    return int(u._model.joint("object_joint_0").qposadr[0])


def cube_pose_features(u, qpos: np.ndarray) -> np.ndarray:
    """(T, 5) the cube's position in OGBench's state scaling and its yaw as (cos, sin), from qpos rows (T, nq)."""
    from qsft_robot.sim import ogbench_tasks as ot

    q = np.atleast_2d(np.asarray(qpos, np.float64))
    i = cube_qpos_address(u)
    yaw = 2.0 * np.arctan2(q[:, i + 6], q[:, i + 3])
    return np.concatenate([(q[:, i:i + 3] - ot.XYZ_CENTER) * ot.XYZ_SCALE, np.cos(yaw)[:, None],
                           np.sin(yaw)[:, None]], 1)


def patch_state(extra: str) -> None:
    from qsft_robot.sim import ogbench_play as op
    from qsft_robot.sim import ogbench_tasks as ot
    state, step, reset, proprio = ot.OGBenchTask.state, ot.OGBenchTask.step, ot.OGBenchTask.reset, ot.proprio_from_qpos
    if extra == "cube":
        # through proprio_from_qpos, the one function that both the env's state and the logs' states come from
        def with_cube(u, qpos, scratch):
            return np.concatenate([proprio(u, qpos, scratch), cube_pose_features(u, qpos)[0]]).astype(np.float32)
        ot.proprio_from_qpos = op.proprio_from_qpos = with_cube
    elif extra == "prev_action":
        def with_prev(self):
            return np.concatenate([state(self), getattr(self, "_prev", np.zeros(5))]).astype(np.float32)

        def step_prev(self, action):
            out = step(self, action)   # its observation was built before _prev moved: rebuilt
            self._prev = np.clip(np.asarray(action, dtype=np.float64), -1, 1)
            return ({**out[0], "state": self.state()}, *out[1:])

        def reset_prev(self, seed=None):
            self._prev = np.zeros(5)
            return reset(self, seed)
        ot.OGBenchTask.state, ot.OGBenchTask.step, ot.OGBenchTask.reset = with_prev, step_prev, reset_prev


def patch_oracle(oracle: str) -> None:
    """--oracle markov: the task's expert_action becomes the wheel's CubeMarkovOracle (seeded per episode as the
    plan oracle is: it draws its final resting pose from numpy's global RNG); markov_noisy adds the noisy logs'
    operator noise (a per-episode level, 10% random actions), which separates their noise from their random tasks."""
    if oracle == "plan":
        return
    from qsft_robot.sim import ogbench_play as op
    from qsft_robot.sim import ogbench_tasks as ot

    def markov_action(self):
        info = self._oracle_info()
        if self._oracle is None:
            from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
            self._oracle = CubeMarkovOracle(env=self.env)
            saved = np.random.get_state()
            np.random.seed(self._episode_seed)
            try:
                self._oracle.reset(None, info)
                self._noise = float(np.random.uniform(0.0, op.NOISY_NOISE)) if oracle == "markov_noisy" else 0.0
            finally:
                np.random.set_state(saved)
        if oracle == "markov_noisy":
            return op._operator_action(self._oracle, None, info, "noisy", self._noise)
        return np.clip(np.asarray(self._oracle.select_action(None, info), np.float64), -1.0, 1.0)
    ot.OGBenchTask.expert_action = markov_action


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--extra-state", choices=["none", "cube", "prev_action"], default="none")
    ap.add_argument("--oracle", choices=["plan", "markov", "markov_noisy"], default="plan")
    ap.add_argument("--data", choices=["expert", "noisy"], default="expert",
                    help="demos of the task, or the benchmark's noisy random-task logs (--demos of them)")
    ap.add_argument("--demos", type=int, default=100)
    ap.add_argument("--log-steps", type=int, default=0, help="--data noisy: steps per log (0: upstream's 1001)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--episodes", type=int, default=20)
    a = ap.parse_args()
    if a.data == "noisy" and a.oracle != "plan":
        ap.error("--oracle picks the operator of --data expert demos; noisy logs are the Markov oracles' already")
    if a.data == "expert" and a.log_steps:
        ap.error("--log-steps cuts noisy logs (--data noisy); expert demos end at the task's success")
    from qsft_robot.algo.policy import load_policy
    from qsft_robot.algo.recipes import BASE_SETS
    from qsft_robot.config import load_config, setup_logging
    from qsft_robot.sim.collect import collect_episodes
    from qsft_robot.sim.evaluate import evaluate
    from qsft_robot.train.trainer import train

    setup_logging("INFO")
    patch_state(a.extra_state)
    patch_oracle(a.oracle)
    task = TASK if a.data == "expert" else NOISY_TASK
    eps = collect_episodes(task, a.demos, a.data, seed=0, image_size=64, workers=1, max_steps=a.log_steps)
    run = OUT / f"ogbench_{a.data}_bc_{a.oracle}_{a.extra_state}" if a.data == "expert" else \
        OUT / f"ogbench_noisy_bc_{a.extra_state}_{a.log_steps or 1001}"
    ckpt = train(load_config(None, [*BASE_SETS, "algo.name=sft", f"train.steps={a.steps}", f"train.out_dir={run}",
                                    "train.eval_every=0"]), eps)
    rows = []
    evals = [("held-out seeds from 5000", 5000)] + ([("the training episodes' seeds from 0", 0)]
                                                    if a.data == "expert" else [])
    for label, seed in evals:
        s = evaluate(load_policy(ckpt), task, episodes=a.episodes, seed=seed, num_envs=10, videos=0)
        rows.append([label, f"{s['success_rate']:.2f}", s["episodes"]])
    what = (f"{a.oracle} oracle demos" if a.data == "expert"
            else f"noisy logs (random tasks, {a.log_steps or 1001} steps)")
    rate = np.mean([e.success for e in eps])
    table(f"BC on {a.demos} {what} of {task}: {len(eps)} episodes ({rate:.2f} successful), "
          f"{a.steps} steps, state + {a.extra_state} ({eps[0].state.shape[1]} numbers)",
          ["evaluation episodes", "success", "n"], rows)


if __name__ == "__main__":
    main()
