"""External benchmark: any Gymnasium env as a task, Meta-World v3 tasks through the whole
pipeline (scripted experts, operator presets, LeRobot v3.0 data, training, evaluation), real MuJoCo."""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli import run

gym = pytest.importorskip("gymnasium", reason="install the 'metaworld' extra (docs/tasks.md)")
pytest.importorskip("metaworld", reason="install the 'metaworld' extra (docs/tasks.md)")

BENCH_TASKS = ["metaworld/button-press-topdown-v3", "metaworld/drawer-open-v3", "metaworld/push-v3"]


class DotReach(gym.Env):
    """A plain Gymnasium env (not MuJoCo, not Meta-World): a dot moves towards a target square; success
    when it is inside. It renders rgb_array frames of its own size, 40x30, not square."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self):
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float64)
        self.render_mode = "rgb_array"

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.goal = self.np_random.uniform(-0.8, 0.8, 2), self.np_random.uniform(-0.8, 0.8, 2)
        return np.concatenate([self.pos, self.goal]), {}

    def step(self, action):
        self.pos = np.clip(self.pos + 0.2 * np.asarray(action), -1, 1)
        success = bool(np.abs(self.pos - self.goal).max() < 0.1)
        return np.concatenate([self.pos, self.goal]), float(success), False, False, {"success": success}

    def render(self):
        img = np.zeros((30, 40, 3), np.uint8)
        gx, gy = ((self.goal + 1) / 2 * [39, 29]).astype(int)
        img[max(0, gy - 2):gy + 3, max(0, gx - 2):gx + 3, 1] = 255
        return img


def test_any_gymnasium_env_is_a_task():
    from qsft_robot.sim.gym_task import GymTask

    task = GymTask(DotReach, "reach the green square", image_size=32, max_steps=25, state_fn=lambda o: o[:2],
                   oracle_fn=lambda o: o[2:], oracle_state=True)
    obs, info = task.reset(seed=3)
    assert obs["images"]["rgb"].shape == (32, 32, 3) and obs["images"]["rgb"].dtype == np.uint8
    assert obs["state"].shape == (4,) and obs["instruction"] == "reach the green square"
    assert task.action_dim == 2 and not info["success"]
    again, _ = GymTask(DotReach, "x", image_size=32, max_steps=25).reset(seed=3)
    assert np.array_equal(again["images"]["rgb"], obs["images"]["rgb"])   # the seed decides the scene
    with pytest.raises(ValueError, match="non-finite"):
        task.step([np.nan, 0.0])
    done, t = False, 0
    while not done:   # a greedy controller on the oracle state reaches it: success ends the episode
        obs, r, term, trunc, info = task.step(np.clip((obs["state"][2:] - obs["state"][:2]) * 5, -1, 1))
        done, t = term or trunc, t + 1
    assert info["success"] and term and r == 1.0 and t < 25
    task.reset(seed=4)
    for _ in range(25):   # standing still never succeeds: truncated at max_steps, not terminated
        _, _, term, trunc, _ = task.step([0.0, 0.0])
        if term or trunc:
            break
    assert trunc and not term and task.t == 25
    limited = GymTask(lambda: gym.wrappers.TimeLimit(DotReach(), 12), "x", image_size=32)
    assert limited.max_steps == 12   # max_steps=0: the env's own TimeLimit
    with pytest.raises(ValueError, match="needs max_steps"):
        GymTask(DotReach, "x")


def test_metaworld_scenes_follow_the_seed_and_frames_are_upright():
    from qsft_robot.sim.registry import make_task

    a, b = make_task(BENCH_TASKS[0]), make_task(BENCH_TASKS[0])
    oa, ob = a.reset(seed=7)[0], b.reset(seed=7)[0]
    assert np.array_equal(oa["images"]["corner2"], ob["images"]["corner2"])
    a.reset(seed=8)
    assert not np.allclose(a.raw_obs[4:7], b.raw_obs[4:7])   # another seed, another button position
    img = oa["images"]["corner2"].astype(float)
    assert oa["instruction"] == "press the button from the top" and oa["state"].shape == (4,)
    # the right way up: the red arm and the brown table fill the lower half, the grey floor the upper
    red = img[..., 0] - img[..., 2]
    assert red[32:].mean() > red[:16].mean() + 8, (red[32:].mean(), red[:16].mean())
    with pytest.raises(ValueError, match="unknown Meta-World task"):
        make_task("metaworld/no-such-task-v3")
    a.close()
    b.close()


@pytest.mark.slow
@pytest.mark.parametrize("task", BENCH_TASKS)
def test_metaworld_scripted_expert_solves_the_task(task):
    from qsft_robot.sim.collect import rollout_expert

    eps = [rollout_expert(task, seed, "expert", 64) for seed in (0, 1)]
    assert all(e.success and e.terminated for e in eps), [len(e.actions) for e in eps]
    assert all(len(e.actions) < 120 and e.actions.shape[1] == 4 and np.abs(e.actions).max() <= 1 for e in eps)
    assert all(e.rewards[-1] == 1 and e.rewards[:-1].sum() == 0 for e in eps)


@pytest.mark.slow
def test_metaworld_operator_presets_give_mixed_quality():
    from qsft_robot.sim.collect import rollout_expert

    eps = [rollout_expert(BENCH_TASKS[0], seed, "biased", 64) for seed in range(6)]
    wrong = [e for e in eps if e.meta["wrong_target"]]
    right = [e for e in eps if not e.meta["wrong_target"]]
    assert wrong and right
    assert not any(e.success for e in wrong) and all(e.success for e in right)
    assert all(len(e.actions) == 150 for e in wrong)   # time-outs at the task's limit
    # the decoy is away from the button: a wrong episode ends far from where the expert ends on its scene
    for w in wrong[:2]:
        ref = rollout_expert(BENCH_TASKS[0], w.meta["seed"], "expert", 64)
        assert np.linalg.norm(w.state[-1, :3] - ref.state[-1, :3]) > 0.1


@pytest.mark.slow
def test_metaworld_collect_train_eval_end_to_end(tmp_path):
    ds = tmp_path / "ds"
    out = run("collect", "--task", BENCH_TASKS[0], "--episodes", "2", "--quality", "expert", "--out", str(ds))
    assert "wrote 2 episodes" in out.stdout
    insp = json.loads(run("data", "inspect", str(ds), "--json").stdout)
    assert insp["episodes"] == 2 and insp["action_dims"] == 4 and insp["cameras"]["corner2"] == [64, 64, 3]
    run("train", "--data", str(ds), "--algo", "sft", "--out", str(tmp_path / "run"), "--set", "train.steps=2",
        "--set", "train.batch_size=4", "--set", "algo.num_bins=16")
    run("eval", str(tmp_path / "run"), "--task", BENCH_TASKS[0], "--episodes", "1", "--num-envs", "1",
        "--videos", "1", "--set", "eval.max_steps=8", "--out", str(tmp_path / "ev"))
    res = json.loads((tmp_path / "ev" / f"eval_policy_{BENCH_TASKS[0].replace('/', '_')}.json").read_text())
    assert res["episodes"] == 1 and res["per_episode"][0]["length"] == 8
    assert res["per_episode"][0]["instruction"] == "press the button from the top"
