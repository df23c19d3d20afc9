"""External benchmark: OGBench's visual manipulation single-task variants as `ogbench/<name>` tasks,
its play data (the upstream generator ported over the wheel's oracles) and upstream `.npz` files, through
collection, LeRobot v3.0, training and evaluation. The name and log-cutting tests need no OGBench."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from test_cli import run

needs_ogbench = pytest.mark.skipif(importlib.util.find_spec("ogbench") is None,
                                   reason="install the 'ogbench' extra (README: OGBench)")
TASK = "ogbench/visual-cube-single-play-singletask-task2-v0"   # cube-single's default task: the cube 15 cm away
GOAL = np.array([0.50, 0.0, 0.02])                            # its goal (the wheel's task2_vertical1)


def test_names_follow_ogbench():
    from qsft_robot.sim.ogbench_tasks import parse_name

    s = parse_name(TASK)
    assert (s.env_id, s.play_env_id, s.state_env_id, s.dataset_name, s.variant, s.task_id, s.render) == (
        "visual-cube-single-singletask-task2-v0", "visual-cube-single-v0", "cube-single-singletask-task2-v0",
        "visual-cube-single-play-v0", "cube-single", 2, "fast")
    assert parse_name("ogbench/visual-cube-single-singletask-task2-v0").env_id == s.env_id   # the env id works too
    assert parse_name(TASK + "@lite").render == "lite"
    up = parse_name("ogbench/visual-puzzle-3x3-play-singletask-v0@upstream")
    assert (up.env_id, up.play_env_id, up.task_id, up.render) == ("visual-puzzle-3x3-singletask-v0",
                                                                  "visual-puzzle-3x3-v0", 0, "upstream")
    for bad in ("ogbench/cube-single-play-singletask-task1-v0", "ogbench/visual-cube-single-v0",
                "ogbench/visual-antmaze-medium-navigate-singletask-v0"):
        with pytest.raises(ValueError, match="visual manipulation single-task"):
            parse_name(bad)


def test_a_log_is_cut_at_the_evaluation_tasks_successes():
    from qsft_robot.sim.ogbench_play import episodes_from_log

    T = 10
    frames = np.arange(T, dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(4, 2).repeat(3, 3)
    actions = np.arange(T, dtype=np.float32)[:, None].repeat(5, 1)
    state = actions.copy()
    # states 0..10: the step 2 -> 3 reaches the goal, 3-4 stay there (not logged), 5 leaves, step 7 -> 8 reaches
    # it again, then 8 leaves and the log ends at 10 without success
    success = np.zeros(T + 1, bool)
    success[[3, 4, 8]] = True
    eps = episodes_from_log(frames, actions, state, success, "x", "cam", {"seed": 7})
    assert [(int(e.actions[0, 0]), len(e), e.success, e.terminated) for e in eps] == [
        (0, 3, True, True), (5, 3, True, True), (9, 1, False, False)]
    assert [e.rewards.tolist() for e in eps] == [[0, 0, 1], [0, 0, 1], [0]]
    assert [e.meta["log_step"] for e in eps] == [0, 5, 9] and all(e.meta["seed"] == 7 for e in eps)
    assert np.array_equal(eps[1].images["cam"][:, 0, 0, 0], [5, 6, 7]) and np.array_equal(eps[1].state[:, 0], [5, 6, 7])
    assert episodes_from_log(frames, actions, state, np.ones(T + 1, bool), "x", "cam", {}) == []
    with pytest.raises(ValueError, match="needs 10 frames"):
        episodes_from_log(frames, actions, state, success[:-1], "x", "cam", {})


@pytest.fixture(scope="module")
def task():
    from qsft_robot.sim.registry import make_task

    t = make_task(TASK)
    yield t
    t.close()


@needs_ogbench
def test_tiny_env_through_gymtask(task):
    from qsft_robot.sim.registry import make_task

    obs, info = task.reset(seed=3)
    assert obs["images"]["front_pixels"].shape == (64, 64, 3) and obs["images"]["front_pixels"].dtype == np.uint8
    assert obs["state"].shape == (5,) and obs["instruction"] == "move the cube away from the robot"
    assert task.action_dim == 5 and task.max_steps == 200 and not info["success"]
    assert task.render(192).shape == (192, 192, 3)
    other = make_task(TASK)   # a second task gets a second env; same seed, same scene
    assert np.array_equal(other.reset(seed=3)[0]["images"]["front_pixels"], obs["images"]["front_pixels"])
    first = other.reset(seed=4)[0]["images"]["front_pixels"]
    other.close()
    again = make_task(TASK)   # the pooled env, reused: the same frames as a new one
    assert np.array_equal(again.reset(seed=4)[0]["images"]["front_pixels"], first)
    again.close()
    # the proprio state is the gripper's: OGBench's own (one physics substep staler) effector position agrees
    u = task.unwrapped
    ob_info = u.compute_ob_info()
    assert np.allclose(obs["state"][:3], (ob_info["proprio/effector_pos"] - [0.425, 0, 0]) * 10, atol=0.02)
    assert abs(obs["state"][4] - ob_info["proprio/gripper_opening"][0]) < 1e-5
    # @lite hides the robot's nearly transparent links only: not the gripper's pads, nothing of the scene
    from qsft_robot.sim.ogbench_tasks import faint_robot_geoms
    bodies = {u._model.body(u._model.geom_bodyid[g]).name for g in faint_robot_geoms(u._model)}
    assert "ur5e/forearm_link" in bodies and all(b.startswith("ur5e/") for b in bodies)
    assert not any(b.endswith("_pad") and "silicone" not in b for b in bodies)
    obs, r, term, trunc, info = task.step(np.zeros(5))
    assert (r, term, trunc, info["success"]) == (0.0, False, False, False)
    with pytest.raises(ValueError, match="non-finite"):
        task.step([np.nan] * 5)
    # put the cube on its goal: the env's own success, reward 1 on that step, the episode ends
    u._data.joint("object_joint_0").qpos[:3] = GOAL
    u._data.joint("object_joint_0").qvel[:] = 0
    obs, r, term, trunc, info = task.step(np.zeros(5))
    assert (r, term, trunc, info["success"]) == (1.0, True, False, True)


@pytest.mark.slow
@needs_ogbench
def test_the_oracle_solves_the_evaluation_task():
    from qsft_robot.sim.collect import rollout_expert

    eps = [rollout_expert(TASK, seed, "expert", 64) for seed in (0, 1)]
    assert all(e.success and e.terminated for e in eps), [len(e) for e in eps]
    assert all(len(e) < 120 and e.actions.shape[1] == 5 and np.abs(e.actions).max() <= 1 for e in eps)
    assert all(e.rewards[-1] == 1 and e.rewards[:-1].sum() == 0 for e in eps)


@pytest.mark.slow
@needs_ogbench
def test_play_logs_are_seeded_and_cut():
    from qsft_robot.sim.collect import check_quality
    from qsft_robot.sim.ogbench_play import play_episodes

    a = play_episodes(TASK, 5, 64, max_steps=25)
    b = play_episodes(TASK, 5, 64, max_steps=25)   # the same seed on the reused env: the same log
    assert sum(len(e) for e in a) <= 25 and a[0].meta["source"] == "ogbench play (visual-cube-single-v0)"
    assert np.array_equal(np.concatenate([e.actions for e in a]), np.concatenate([e.actions for e in b]))
    assert all(e.images["front_pixels"].shape[1:] == (64, 64, 3) and e.state.shape[1] == 5 for e in a)
    assert np.abs(a[0].actions).max() <= 1 and a[0].instruction == "move the cube away from the robot"
    with pytest.raises(ValueError, match="comes as --quality play or noisy"):
        check_quality(TASK, "biased")
    with pytest.raises(ValueError, match="needs an ogbench"):
        check_quality("arm_reach", "play")


@pytest.mark.slow
@needs_ogbench
def test_noisy_logs_come_from_the_markov_oracle_with_upstreams_noise(monkeypatch):
    """--quality noisy: the same seeding and cutting as play, the Markov oracle acting, upstream's noise on it
    (Gaussian x3 on yaw, x10 on the gripper; a random action now and then), and a log that differs from play's."""
    from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle

    from qsft_robot.sim import ogbench_play
    from qsft_robot.sim.collect import check_quality

    calls = []
    select = CubeMarkovOracle.select_action
    monkeypatch.setattr(CubeMarkovOracle, "select_action",
                        lambda self, ob, info: calls.append(1) or select(self, ob, info))
    a = ogbench_play.play_episodes(TASK, 5, 64, max_steps=40, kind="noisy")
    b = ogbench_play.play_episodes(TASK, 5, 64, max_steps=40, kind="noisy")
    play = ogbench_play.play_episodes(TASK, 5, 64, max_steps=40)
    acts = np.concatenate([e.actions for e in a])
    assert np.array_equal(acts, np.concatenate([e.actions for e in b]))
    assert not np.array_equal(acts, np.concatenate([e.actions for e in play])[:len(acts)])
    assert a[0].meta["source"] == "ogbench noisy (visual-cube-single-v0)" and np.abs(acts).max() <= 1
    assert 0 < len(calls) < 2 * 40   # the oracle acted (not on the random steps), once per step of each log
    with monkeypatch.context() as m:   # noise off and no random actions: the oracle's own (clipped) actions
        m.setattr(ogbench_play, "NOISY_NOISE", 0.0)
        m.setattr(ogbench_play, "NOISY_P_RANDOM", 0.0)
        clean = np.concatenate([e.actions for e in ogbench_play.play_episodes(TASK, 5, 64, max_steps=40, kind="noisy")])
    # the Markov oracle's gripper command is exactly +-1; upstream's x10 gripper noise moves it off
    assert set(np.round(clean[:, 4], 6)) <= {-1.0, 1.0} and not set(np.round(acts[:, 4], 6)) <= {-1.0, 1.0}
    with pytest.raises(ValueError, match="needs an ogbench"):
        check_quality("arm_reach", "noisy")


@needs_ogbench
def test_upstream_npz_is_read_through_ogbenchs_loader(tmp_path, task):
    """A tiny file in the upstream layout (the generator's keys and dtypes): two trajectories, the cube put on
    task 2's goal for a while in the first."""
    from qsft_robot.sim.ogbench_play import episodes_from_npz

    task.reset(seed=0)
    q0 = task.unwrapped._data.qpos.copy()
    n = 13   # trajectories of 8 and 5 steps
    qpos = np.repeat(q0[None], n, 0)
    qpos[3:5, 14:17] = GOAL   # steps 3, 4 of trajectory 0 are at the goal: step 2 reaches it
    rng = np.random.default_rng(0)
    np.savez_compressed(tmp_path / "visual-cube-single-play-v0.npz",
                        observations=rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8),
                        actions=rng.uniform(-1, 1, (n, 5)).astype(np.float32),
                        terminals=np.array([0] * 7 + [1] + [0] * 4 + [1], bool),
                        qpos=qpos.astype(np.float32), qvel=np.zeros((n, task.unwrapped._data.qvel.size), np.float32))
    eps = episodes_from_npz(TASK, tmp_path / "visual-cube-single-play-v0.npz")
    # trajectory 0 (8 states, 7 actions with an outcome): [0, 1, 2] reaches the goal; [5, 6] ends unsuccessful;
    # trajectory 1 (5 states, 4 actions): one unsuccessful episode
    assert [(len(e), e.success, e.meta["log_step"], e.meta["seed"]) for e in eps] == [
        (3, True, 0, 0), (2, False, 5, 0), (4, False, 0, 1)]
    assert eps[0].rewards.tolist() == [0, 0, 1] and eps[0].state.shape == (3, 5)
    assert np.allclose(eps[0].state[0], task.state(), atol=1e-4)   # proprio from the file's qpos
    bad = tmp_path / "bad.npz"
    np.savez(bad, actions=np.zeros((2, 5)))
    with pytest.raises(ValueError, match="not an OGBench dataset"):
        episodes_from_npz(TASK, bad)


@pytest.mark.slow
@needs_ogbench
def test_ogbench_collect_train_eval_end_to_end(tmp_path):
    """Through the CLI on the `@lite` renderer (the benchmark's; the robot's faint links not drawn)."""
    ds = tmp_path / "ds"
    out = run("collect", "--task", TASK + "@lite", "--quality", "play", "--episodes", "1", "--max-steps", "30",
              "--out", str(ds))
    assert "wrote" in out.stdout
    insp = json.loads(run("data", "inspect", str(ds), "--json").stdout)
    assert insp["action_dims"] == 5 and insp["cameras"]["front_pixels"] == [64, 64, 3]
    # a 30-step log rarely meets task 2's goal: without a success, the reward rule is named rather than found
    run("train", "--data", str(ds), "--algo", "sft", "--out", str(tmp_path / "run"), "--set", "train.steps=2",
        "--set", "train.batch_size=4", "--set", "algo.num_bins=16", "--set", "data.reward=success")
    run("eval", str(tmp_path / "run"), "--task", TASK + "@lite", "--episodes", "1", "--num-envs", "1", "--videos",
        "1", "--set", "eval.max_steps=6", "--out", str(tmp_path / "ev"))
    res = json.loads((tmp_path / "ev" / f"eval_policy_{TASK.replace('/', '_')}@lite.json").read_text())
    assert res["episodes"] == 1 and res["per_episode"][0]["length"] == 6
    assert res["per_episode"][0]["instruction"] == "move the cube away from the robot"
