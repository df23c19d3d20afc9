"""Tabular check: lookup-table models trained only through bellman_targets + qsft_loss + behaviour CE
reach the exact fixed point of the expected Q-SFT update, computed independently by DP (tabular_mdp)."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from qsft_robot.algo.qsft import behavior_loss, bellman_targets, polyak_update, qsft_loss, sigmoid_q_loss
from tabular_mdp import (expected_return, greedy, q_behaviour, q_expectile, q_star, qsft_fixed_point, random_mdp,
                         sample_dataset, sigmoid_fixed_point)

EPISODES = 8000
MDP_SEED = 3


def train_tables(data, num_token_states, num_bins, leftover, steps=600, seed=0, lr=0.1, alpha=0.05,
                 next_value="max", target="bellman", tau=0.9, critic="ratio", conservative=1.0):
    """Full-batch training of three logit tables (theta, theta_bar, phi) on the whole dataset.

    Full batch removes SGD noise, so what is left between the table and p* is the finite data.
    Returns (p_theta, pi_beta) tables; with critic="sigmoid" (fitted by sigmoid_q_loss) theta's table is
    sigmoid(logit), its Q.
    """
    torch.manual_seed(seed)
    target_kind = target
    width = num_bins + 1 if leftover == "dummy" else num_bins
    theta = torch.nn.Embedding(num_token_states, width)
    phi = torch.nn.Embedding(num_token_states, num_bins)
    torch.nn.init.zeros_(theta.weight)
    torch.nn.init.zeros_(phi.weight)
    target = torch.nn.Embedding(num_token_states, width)
    target.load_state_dict(theta.state_dict())
    opt = torch.optim.Adam(list(theta.parameters()) + list(phi.parameters()), lr=lr)
    t = {k: torch.as_tensor(v) for k, v in data.items()}
    for _ in range(steps):
        if target_kind == "return_to_go":  # the trainer's algo.target=return_to_go: w = G_t, no bootstrap
            w = t["return"].float()
        else:
            w = bellman_targets(target(t["next_state"]), phi(t["next_state"]), t["reward"], t["discount"],
                                next_value=next_value, tau=tau, critic=critic)
        q_loss = (sigmoid_q_loss(theta(t["state"]), t["action"], w, conservative) if critic == "sigmoid"
                  else qsft_loss(theta(t["state"]), t["action"], w, leftover))
        loss = q_loss + behavior_loss(phi(t["state"]), t["action"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        polyak_update(target, theta, alpha=alpha)
    with torch.no_grad():
        q = theta.weight.sigmoid() if critic == "sigmoid" else theta.weight.softmax(-1)
        return q.numpy(), phi.weight.softmax(-1).numpy()


@functools.lru_cache(maxsize=None)
def trained(behaviour: str, leftover: str):
    mdp = random_mdp(seed=MDP_SEED, behaviour=behaviour)
    data = sample_dataset(mdp, EPISODES, seed=1)
    p, pi = train_tables(data, mdp.num_token_states, mdp.num_bins, leftover)
    return mdp, data, p, pi


def returns(behaviour: str, leftover: str) -> dict[str, float]:
    mdp, _, p, pi = trained(behaviour, leftover)
    B = mdp.num_bins
    p_real = p[:, :B] / p[:, :B].sum(-1, keepdims=True)
    return {
        "optimal": expected_return(mdp, greedy(q_star(mdp))),
        "greedy argmax_q": expected_return(mdp, greedy(p_real)),
        "greedy sft": expected_return(mdp, greedy(pi)),
        "sampled p_theta": expected_return(mdp, p_real),
        "pi_beta": expected_return(mdp, mdp.behaviour_table()),
    }


def fmt(r):
    return ", ".join(f"{k}={v:.3f}" for k, v in r.items())


@pytest.mark.slow
@pytest.mark.parametrize("leftover", ["uniform", "dummy"])
def test_learned_table_matches_exact_fixed_point(leftover, report):
    mdp, data, p_learned, _ = trained("random", leftover)
    p_star = qsft_fixed_point(mdp, leftover)
    counts = np.bincount(data["state"], minlength=mdp.num_token_states)
    rows = np.nonzero(counts >= 300)[0]
    assert len(rows) >= mdp.num_states, "the test MDP must visit its token states often"
    err = np.abs(p_learned[rows] - p_star[rows]).max()
    report(f"tabular[{leftover}] max |p_learned - p*| over {len(rows)} often-visited token states = {err:.4f}")
    assert err <= 0.05


@pytest.mark.parametrize("leftover", ["uniform", "dummy"])
@pytest.mark.parametrize("behaviour", ["random", "diffuse", "peaked_poor"])
def test_theorem_bounds_on_exact_fixed_point(behaviour, leftover, report):
    """pi_beta * Q* <= p* <= Q* where Q* >= 1/(B-1) (paper, Thm 4.1), counted and reported."""
    mdp = random_mdp(seed=MDP_SEED, behaviour=behaviour)
    q, pi = q_star(mdp), mdp.behaviour_table()
    p = qsft_fixed_point(mdp, leftover)[:, : mdp.num_bins]
    where = q >= 1.0 / (mdp.num_bins - 1)
    upper = int(((p > q + 1e-6) & where).sum())
    lower = int(((p < pi * q - 1e-6) & where).sum())
    report(f"tabular[{behaviour},{leftover}] bounds on {int(where.sum())} entries: "
           f"{lower} lower, {upper} upper violations")
    if leftover == "dummy":  # p* = pi * w with 0 <= w <= Q*: the upper bound is exact
        assert upper == 0
    assert where.sum() > 0


@pytest.mark.slow
def test_sampled_p_theta_beats_behaviour(report):
    for leftover in ("uniform", "dummy"):
        r = returns("random", leftover)
        report(f"tabular returns [random behaviour, {leftover}]: {fmt(r)}")
        assert r["sampled p_theta"] > r["pi_beta"]
        assert r["optimal"] >= max(r.values()) - 1e-9


@pytest.mark.slow
def test_argmax_q_beats_sft_with_diffuse_behaviour(report):
    """Noisy-scripted-data regime. Asserted for the dummy leftover; the uniform variant is reported:
    with B = 3 its leak sum(pi (1 - w))/(B - 1) lifts every first-dim ratio to the clip at 1, so its
    argmax follows pi_beta (the leak shrinks as B grows)."""
    r_dummy = returns("diffuse", "dummy")
    r_uniform = returns("diffuse", "uniform")
    report(f"tabular returns [diffuse behaviour, dummy]: {fmt(r_dummy)}")
    report(f"tabular returns [diffuse behaviour, uniform]: {fmt(r_uniform)}")
    assert r_dummy["greedy argmax_q"] > r_dummy["greedy sft"]
    assert r_dummy["sampled p_theta"] > r_dummy["pi_beta"]
    assert r_uniform["greedy argmax_q"] >= r_uniform["greedy sft"] - 1e-9


@pytest.mark.slow
def test_peaked_poor_behaviour_regime_is_reported(report):
    """Where pi_beta is peaked on a poor bin, argmax p_theta is behaviour-regularised and may equal SFT:
    no ordering is claimed, the numbers are reported, and every return stays below the optimum."""
    for leftover in ("uniform", "dummy"):
        r = returns("peaked_poor", leftover)
        report(f"tabular returns [peaked-on-poor behaviour, {leftover}]: {fmt(r)}")
        assert all(0.0 <= v <= r["optimal"] + 1e-9 for v in r.values())


@pytest.mark.slow
def test_expectation_targets_reach_pi_beta_times_its_own_q():
    """next_value="expectation" (dummy leftover): the fixed point is p = pi_beta * Q^{pi_beta}, with
    Q^{pi_beta} from an exact linear solve; and acting greedily on it beats pi_beta (one-step
    improvement), while the max variant's fixed point is a different table on this MDP."""
    mdp = random_mdp(seed=MDP_SEED, behaviour="random")
    data = sample_dataset(mdp, EPISODES, seed=1)
    p, _ = train_tables(data, mdp.num_token_states, mdp.num_bins, "dummy", next_value="expectation")
    want = mdp.behaviour_table() * q_behaviour(mdp)
    rows = np.nonzero(np.bincount(data["state"], minlength=mdp.num_token_states) >= 300)[0]
    B = mdp.num_bins
    err = np.abs(p[rows, :B] - want[rows]).max()
    assert err <= 0.05, err
    assert np.abs(qsft_fixed_point(mdp, "dummy")[rows, :B] - want[rows]).max() > 0.05
    assert expected_return(mdp, greedy(p[:, :B])) > expected_return(mdp, mdp.behaviour_table()) + 0.01


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["expectile", "return_to_go"])
def test_in_sample_backups_reach_their_exact_fixed_points(variant):
    """expectile (tau 0.8): p = pi_beta * Q_tau, Q_tau from exact expectile value iteration;
    return_to_go: p = pi_beta * Q^{pi_beta} (the Monte-Carlo mean of G is Q of the logged policy).
    The expectile's fixed point lies strictly between the logged policy's Q and the max backup's."""
    mdp = random_mdp(seed=MDP_SEED, behaviour="random")
    data = sample_dataset(mdp, EPISODES, seed=1)
    kw = {"next_value": "expectile", "tau": 0.8} if variant == "expectile" else {"target": "return_to_go"}
    p, _ = train_tables(data, mdp.num_token_states, mdp.num_bins, "dummy", **kw)
    q = q_expectile(mdp, 0.8) if variant == "expectile" else q_behaviour(mdp)
    want = mdp.behaviour_table() * q
    rows = np.nonzero(np.bincount(data["state"], minlength=mdp.num_token_states) >= 300)[0]
    B = mdp.num_bins
    assert np.abs(p[rows, :B] - want[rows]).max() <= 0.05
    if variant == "expectile":
        qb, qe = q_behaviour(mdp)[rows], q[rows]
        assert (qe >= qb - 1e-9).all() and (qe > qb + 0.02).any()


def train_tables_n_step(mdp, steps_data, n, samples, train_steps=800, lr=0.1, alpha=0.05):
    """target=n_step: the trainer's per-step targets (data/n_step.py windows over whole episodes, V from
    the target table's first-token row), shared by both tokens of a step, through the library functions."""
    from qsft_robot.data.n_step import n_step_windows

    torch.manual_seed(0)
    S, B = mdp.num_states, mdp.num_bins
    theta = torch.nn.Embedding(mdp.num_token_states, B + 1)
    phi = torch.nn.Embedding(mdp.num_token_states, B)
    torch.nn.init.zeros_(theta.weight)
    torch.nn.init.zeros_(phi.weight)
    target = torch.nn.Embedding(mdp.num_token_states, B + 1)
    target.load_state_dict(theta.state_dict())
    opt = torch.optim.Adam(list(theta.parameters()) + list(phi.parameters()), lr=lr)
    boot, reward, discount, valid = (torch.as_tensor(x) for x in n_step_windows(
        steps_data["reward"], steps_data["done"], steps_data["next_index"], n, mdp.gamma))
    assert bool(valid.all())   # whole episodes only: every step has a target
    s, b1, b2 = (torch.as_tensor(steps_data[k]) for k in ("state", "b1", "b2"))
    rows = torch.stack([s, S + s * B + b1], 1).reshape(-1)            # token states of each step, row-major
    actions = torch.stack([b1, b2], 1).reshape(-1)
    s_boot = s[boot]
    for _ in range(train_steps):
        w = bellman_targets(target(s_boot), phi(s_boot), reward, discount, next_value="emaq", samples=samples)
        loss = (qsft_loss(theta(rows), actions, w.repeat_interleave(2), "dummy")
                + behavior_loss(phi(rows), actions))
        opt.zero_grad()
        loss.backward()
        opt.step()
        polyak_update(target, theta, alpha=alpha)
    with torch.no_grad():
        return theta.weight.softmax(-1).numpy()[:, :B], rows.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("n,samples", [(1, 1), (3, 4)])
def test_n_step_emaq_targets_reach_their_exact_fixed_point(n, samples, report):
    """target=n_step with next_value=emaq reaches p = pi_beta * Q_{n,N}, Q_{n,N} from exact DP (tabular_mdp,
    enumeration of the N draws, no library code). N = 1 is the logged policy's own Q; N = 4 lies strictly
    above it and below Q*, so acting on it improves on pi_beta without the max's saturation."""
    from tabular_mdp import q_n_step_emaq, sample_steps

    mdp = random_mdp(seed=MDP_SEED, behaviour="random")
    data = sample_steps(mdp, EPISODES, seed=1)
    p, rows = train_tables_n_step(mdp, data, n, samples)
    q = q_n_step_emaq(mdp, n, samples)
    want = mdp.behaviour_table() * q
    often = np.nonzero(np.bincount(rows, minlength=mdp.num_token_states) >= 300)[0]
    assert len(often) >= mdp.num_states
    err = np.abs(p[often] - want[often]).max()
    report(f"tabular[n_step n={n}, emaq N={samples}] max |p_learned - p*| over {len(often)} token states = {err:.4f}")
    assert err <= 0.05
    qb = q_behaviour(mdp)
    if samples == 1:
        np.testing.assert_allclose(q, qb, atol=1e-9)   # one draw: the expectation, for any n
    else:
        assert (q[often] >= qb[often] - 1e-9).all() and (q[often] > qb[often] + 0.01).any()
        assert (q <= q_star(mdp) + 1e-9).all()
        assert expected_return(mdp, greedy(p)) > expected_return(mdp, greedy(mdp.behaviour_table())) + 0.01


@pytest.mark.slow
def test_sigmoid_critic_reaches_its_conservative_fixed_point_and_acts_near_optimally(report):
    """critic="sigmoid" (max backup): each bin's sigmoid reaches q* = pi T / (pi + (1 - pi) c / (B - 1)) from
    exact DP; greedy on it is within 0.05 of the optimal return, and beats BC's greedy choice on the diffuse
    (noisy-operator) MDP, where argmax pi_beta is a poor action."""
    c = 0.5
    for behaviour in ("random", "diffuse"):
        mdp = random_mdp(seed=MDP_SEED, behaviour=behaviour)
        data = sample_dataset(mdp, EPISODES, seed=1)
        n = mdp.num_token_states
        # "uniform": theta has the B bins only (the sigmoid critic has no dummy)
        q, _ = train_tables(data, n, mdp.num_bins, "uniform", critic="sigmoid", conservative=c)
        want = sigmoid_fixed_point(mdp, c)
        rows = np.nonzero(np.bincount(data["state"], minlength=n) >= 300)[0]
        err = np.abs(q[rows] - want[rows]).max()
        r = {"optimal": expected_return(mdp, greedy(q_star(mdp))), "greedy sigmoid Q": expected_return(mdp, greedy(q)),
             "greedy sft": expected_return(mdp, greedy(mdp.behaviour_table())),
             "pi_beta": expected_return(mdp, mdp.behaviour_table())}
        report(f"tabular sigmoid critic [{behaviour}, c={c}]: max |q - q*| = {err:.4f} over {len(rows)} rows; {fmt(r)}")
        assert err <= 0.05
        assert r["greedy sigmoid Q"] >= r["optimal"] - 0.05 and r["greedy sigmoid Q"] > r["pi_beta"]
        if behaviour == "diffuse":
            assert r["greedy sigmoid Q"] > r["greedy sft"] + 0.01
