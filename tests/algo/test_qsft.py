"""Unit tests of each Bellman-target case, the soft-label loss and the token-MDP bookkeeping."""
from __future__ import annotations

import math

import pytest
import torch

from qsft_robot.algo.qsft import (behavior_loss, bellman_targets, polyak_update, qsft_loss, smoothed_labels,
                                  token_rewards_discounts)


def logits_of(probs):
    return torch.tensor(probs, dtype=torch.float32).log()


def test_mid_action_target_is_max_supported_ratio():
    # dummy layout: 3 real bins + dummy; real probs .1 .2 .1 against pi .25 .5 .25 -> ratios .4 .4 .4
    q = logits_of([[0.1, 0.2, 0.1, 0.6]])
    pi = logits_of([[0.25, 0.5, 0.25]])
    w = bellman_targets(q, pi, torch.zeros(1), torch.ones(1))
    assert w.item() == pytest.approx(0.4, rel=1e-5)


def test_uniform_layout_ratio_is_at_least_one_and_clipped():
    """Two distributions on one support: max p/pi >= 1, so the target clips to 1 (why dummy is default)."""
    q = logits_of([[0.2, 0.5, 0.3]])
    pi = logits_of([[0.4, 0.5, 0.1]])
    w = bellman_targets(q, pi, torch.zeros(1), torch.ones(1))
    assert w.item() == pytest.approx(1.0)


def test_support_mask_ignores_unsupported_bins():
    q = logits_of([[0.3, 0.3, 0.4]])
    pi = torch.tensor([[0.0, 0.0, -30.0]])  # third bin ~1e-13 < eps: outside the support
    w = bellman_targets(q, pi, torch.zeros(1), torch.ones(1))
    pi_p = pi.softmax(-1)[0]
    assert w.item() == pytest.approx(0.3 / pi_p[0].item(), rel=1e-5)



def test_terminal_target_is_reward_only():
    garbage = torch.randn(2, 4) * 10
    w = bellman_targets(garbage, garbage, torch.tensor([1.0, 0.0]), torch.zeros(2))
    assert w.tolist() == [1.0, 0.0]


def test_truncated_step_bootstraps_while_terminal_does_not():
    r, d = token_rewards_discounts(torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0, 0, 1]), num_dims=3, gamma=0.9)
    assert r.tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert d[:, :2].eq(1).all()
    assert d[:, 2].tolist() == pytest.approx([0.9, 0.9, 0.0])  # step 1 truncated (done=0): bootstraps


def test_targets_are_clipped_and_carry_no_gradient():
    q = torch.randn(5, 6, requires_grad=True)
    pi = torch.randn(5, 6, requires_grad=True)
    w = bellman_targets(q, pi, torch.full((5,), 0.8), torch.full((5,), 0.9))
    assert not w.requires_grad
    assert (w >= 0).all() and (w <= 1).all()


def test_uniform_loss_matches_hand_computation():
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    lp = logits.log_softmax(-1)[0]
    w = 0.7
    expected = -(w * lp[1] + (1 - w) / 2 * (lp[0] + lp[2]))
    got = qsft_loss(logits, torch.tensor([1]), torch.tensor([w]))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_dummy_loss_puts_leftover_on_last_column():
    logits = torch.tensor([[0.5, 0.2, -0.3, 0.1]])  # 3 bins + dummy
    lp = logits.log_softmax(-1)[0]
    got = qsft_loss(logits, torch.tensor([2]), torch.tensor([0.25]), leftover="dummy")
    assert got.item() == pytest.approx(-(0.25 * lp[2] + 0.75 * lp[3]).item(), rel=1e-6)


def test_loss_minimiser_is_soft_label_distribution():
    """Gradient descent on the loss alone drives p to (w on b, (1-w)/(B-1) elsewhere)."""
    logits = torch.zeros(1, 4, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(2000):
        opt.zero_grad()
        qsft_loss(logits, torch.tensor([0]), torch.tensor([0.4])).backward()
        opt.step()
    p = logits.softmax(-1)[0].tolist()
    assert p == pytest.approx([0.4, 0.2, 0.2, 0.2], abs=1e-3)


def test_bad_leftover_is_rejected():
    with pytest.raises(ValueError, match="leftover"):
        qsft_loss(torch.zeros(1, 3), torch.tensor([0]), torch.tensor([1.0]), leftover="bogus")


def test_dummy_targets_use_real_bins_of_full_softmax():
    q = torch.tensor([[0.0, 0.0, math.log(2.0)]])  # softmax: .25 .25 .5 (last = dummy)
    pi = logits_of([[0.5, 0.5]])
    w = bellman_targets(q, pi, torch.zeros(1), torch.ones(1))
    assert w.item() == pytest.approx(0.5)


def test_polyak_update_moves_target_by_alpha():
    online, target = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = target.weight.detach().clone()
    polyak_update(target, online, alpha=0.1)
    assert torch.allclose(target.weight, 0.9 * before + 0.1 * online.weight.detach())


def test_last_dim_target_uses_reward_and_discount():
    q = logits_of([[0.1, 0.2, 0.7]])
    pi = logits_of([[0.5, 0.4, 0.1]])  # ratios 0.2, 0.5, 7.0 -> max 7
    w = bellman_targets(q, pi, torch.tensor([0.05]), torch.tensor([0.09]))
    assert w.item() == pytest.approx(min(1.0, 0.05 + 0.09 * 7.0))


def test_expectation_value_is_normalised_over_the_supported_bins():
    """E_{pi_beta | support}[p_target / pi_beta]: pi_beta's unsupported mass must not shrink the value.
    Here p_target = 0.5 * pi_beta on every bin (Q = 0.5), and one bin is outside the support."""
    pi = torch.tensor([[0.6, 0.38, 0.02]])
    q = torch.cat([0.5 * pi, torch.tensor([[0.5]])], dim=1).log()     # dummy column takes 1 - 0.5
    w = bellman_targets(q, pi.log(), torch.zeros(1), torch.ones(1), support_eps=0.05, next_value="expectation")
    assert w.item() == pytest.approx(0.5, rel=1e-5)  # unnormalised it was 0.5 * 0.98 = 0.49


def test_support_keeps_pi_betas_most_likely_bin_when_every_bin_is_below_eps():
    from qsft_robot.algo.qsft import support_mask
    flat = torch.full((1, 32), 1 / 32).log_softmax(-1).exp()
    flat[0, 7] += 0.001
    flat = flat / flat.sum()
    m = support_mask(flat, 0.05)
    assert m.sum().item() == 1 and m[0, 7]
    q = torch.cat([0.5 * flat, torch.tensor([[0.5]])], dim=1).log()
    w = bellman_targets(q, flat.log(), torch.zeros(1), torch.ones(1), support_eps=0.05)
    assert w.item() == pytest.approx(0.5, rel=1e-4)  # the argmax bin's ratio, not 0 from an empty support


def test_smoothed_labels_are_a_binned_gaussian_cut_to_each_rows_bins():
    q = smoothed_labels(torch.tensor([5, 0, 1, 3]), 8, 1.0, torch.tensor([8, 8, 2, 4]))
    assert torch.allclose(q.sum(-1), torch.ones(4))
    normal = torch.distributions.Normal(5.5, 1.0)  # bin 5 is [5, 6): its centre 5.5
    assert q[0, 5] == pytest.approx(float(normal.cdf(torch.tensor(6.0)) - normal.cdf(torch.tensor(5.0))) /
                                    float(normal.cdf(torch.tensor(8.0)) - normal.cdf(torch.tensor(0.0))), rel=1e-5)
    assert q[0, 4] == pytest.approx(float(q[0, 6]), rel=1e-6) and q[0, 5] > q[0, 4] > q[0, 3]  # symmetric, peaked
    assert q[1, 0] > 0.5 and q[1, 1] > q[1, 2]                   # an edge bin keeps the mass cut off below 0
    assert torch.equal(q[2], torch.nn.functional.one_hot(torch.tensor(1), 8).float())  # binary: one-hot
    assert torch.all(q[3, 4:] == 0) and torch.all(q[3, :4] > 0)   # nothing past the row's own 4 bins


def test_smoothed_behavior_loss_is_minimised_by_the_smoothed_labels_and_zero_sigma_is_cross_entropy():
    actions, bins = torch.tensor([3, 10, 0]), torch.tensor([16, 16, 16])
    logits = torch.randn(3, 16, requires_grad=True)
    assert behavior_loss(logits, actions, 0.0, bins).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, actions).item())
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(500):
        opt.zero_grad()
        behavior_loss(logits, actions, 2.0, bins).backward()
        opt.step()
    target = smoothed_labels(actions, 16, 2.0, bins)
    assert torch.allclose(logits.softmax(-1), target, atol=2e-3)
    assert logits.softmax(-1)[0].argmax() == 3  # the smoothed model's mode is still the data bin


def test_expected_max_equals_enumeration_and_spans_mean_to_max():
    """E[max over N draws] by the sorted-CDF formula equals summing over every N-tuple of draws; N = 1 is
    the weighted mean, large N the max over bins with weight, and a bin with no weight never counts."""
    import itertools

    from qsft_robot.algo.qsft import expected_max
    values = torch.tensor([[0.3, 0.9, 0.1, 0.5], [0.2, 0.2, 0.7, 0.4]])
    weights = torch.tensor([[0.4, 0.1, 0.3, 0.2], [0.5, 0.25, 0.0, 0.25]])
    for n in (1, 2, 3):
        for row in range(2):
            p = (weights[row] / weights[row].sum()).tolist()
            want = sum(math.prod(p[i] for i in t) * max(values[row, i].item() for i in t)
                       for t in itertools.product(range(4), repeat=n))
            assert expected_max(values, weights, n)[row].item() == pytest.approx(want, rel=1e-5)
    assert torch.allclose(expected_max(values, weights, 1), (values * weights).sum(-1) / weights.sum(-1))
    assert expected_max(values, weights, 500).tolist() == pytest.approx([0.9, 0.4], abs=1e-3)  # 0.7 has no weight


def test_emaq_value_damps_a_rare_bins_noisy_ratio():
    """A bin pi_beta proposes 1% of the time with a ratio of 5 (estimation noise): the max takes it, while
    EMaQ's value moves from the expectation by at most N * pi * ratio."""
    pi = torch.tensor([[0.49, 0.5, 0.01]])
    p = torch.tensor([[0.49 * 0.4, 0.5 * 0.4, 0.01 * 5.0]])
    q = torch.cat([p, 1 - p.sum(-1, keepdim=True)], dim=1).log()
    args = (q, pi.log(), torch.zeros(1), torch.ones(1))
    assert bellman_targets(*args, next_value="max").item() == pytest.approx(1.0)   # clipped from 5
    mean = bellman_targets(*args, next_value="expectation").item()
    emaq = bellman_targets(*args, next_value="emaq", samples=4).item()
    assert mean == pytest.approx(0.99 * 0.4 + 0.05, rel=1e-4)
    assert mean < emaq <= mean + 4 * 0.01 * 5.0 and emaq < 0.7
    assert bellman_targets(*args, next_value="emaq", samples=1).item() == pytest.approx(mean, rel=1e-5)


def test_n_step_windows_stop_at_terminations_and_at_the_end_of_a_cut_log():
    """Two episodes: [0..3] ends in a success (terminal, reward 1 on its last step), [4..6] is cut short
    (its last row points at itself). n = 1 gives the one-step transitions; longer windows sum the logged
    rewards, never cross into the next episode and stop at the termination. The cut log's last action
    has no target (no next state was logged): it is not valid, and the windows before it bootstrap at
    its frame without taking its action."""
    import numpy as np

    from qsft_robot.data.n_step import n_step_windows
    reward = np.array([0, 0, 0, 1, 0, 0, 0], np.float32)
    done = np.array([0, 0, 0, 1, 0, 0, 0], bool)
    nxt = np.array([1, 2, 3, 3, 5, 6, 6])
    g = 0.5
    boot, ret, disc, valid = n_step_windows(reward, done, nxt, 1, g)
    assert valid.tolist() == [True] * 6 + [False]
    assert boot[:6].tolist() == nxt[:6].tolist() and ret.tolist() == reward.tolist()
    assert disc[:6].tolist() == [g, g, g, 0, g, g]
    boot, ret, disc, valid = n_step_windows(reward, done, nxt, 3, g)
    assert valid.tolist() == [True] * 6 + [False]
    assert boot[:6].tolist() == [3, 3, 3, 3, 6, 6]
    assert ret.tolist() == pytest.approx([0, g ** 2, g, 1, 0, 0, 0])
    assert disc[:6].tolist() == pytest.approx([g ** 3, 0, 0, 0, g ** 2, g])   # 4: rows 4, 5, then row 6's state
    with pytest.raises(ValueError, match="n >= 1"):
        n_step_windows(reward, done, nxt, 0, g)


def test_smoothed_theta_labels_keep_the_ratio_equal_to_the_target_at_every_bin():
    """One context, one logged bin, target w = 0.3, pi_beta trained on smoothed labels (sigma 2): theta
    trained with the same sigma ends at p_theta = 0.3 * pi_beta on every bin, so the ratio reads w; a
    one-hot theta puts the whole 0.3 on the logged bin, where the ratio then reads 0.3 / pi_beta(b) > 1."""
    actions, bins = torch.tensor([5]), torch.tensor([12])
    w = torch.tensor([0.3])

    def fit(loss_fn, width):
        logits = torch.zeros(1, width, requires_grad=True)
        opt = torch.optim.Adam([logits], lr=0.05)
        for _ in range(1500):
            opt.zero_grad()
            loss_fn(logits).backward()
            opt.step()
        return logits.detach().softmax(-1)

    pi = fit(lambda lg: behavior_loss(lg, actions, 2.0, bins), 12)
    smooth = fit(lambda lg: qsft_loss(lg, actions, w, "dummy", 2.0, bins), 13)
    one_hot = fit(lambda lg: qsft_loss(lg, actions, w, "dummy"), 13)
    near = pi[0] > 0.02
    assert torch.allclose((smooth[0, :12] / pi[0])[near], torch.full((int(near.sum()),), 0.3), atol=0.01)
    assert (one_hot[0, 5] / pi[0, 5]).item() > 1.0


def test_sarsa_steps_back_up_pi_betas_own_value_first_then_next_value():
    """algo.sarsa_steps: theta_bar first learns pi_beta's value (expectation), then the configured backup, whose
    targets differ on the same logits (so the switch is not a no-op)."""
    from qsft_robot.algo.losses import LossContext
    from qsft_robot.config import AlgoConfig, ConfigError, load_config

    algo = AlgoConfig(next_value="emaq", emaq_samples=4, sarsa_steps=3)
    ctx = lambda step: LossContext(None, None, algo, None, None, None, step)  # noqa: E731
    assert [ctx(s).next_value for s in (0, 2, 3, 10)] == ["expectation", "expectation", "emaq", "emaq"]
    g = torch.Generator().manual_seed(0)
    q, b = torch.randn(6, 9, generator=g) * 2, torch.randn(6, 8, generator=g)
    r, disc = torch.zeros(6), torch.full((6,), 0.99)
    first = bellman_targets(q, b, r, disc, 1e-4, ctx(0).next_value, samples=4)
    torch.testing.assert_close(first, bellman_targets(q, b, r, disc, 1e-4, "expectation"))
    later = bellman_targets(q, b, r, disc, 1e-4, ctx(3).next_value, samples=4)
    assert (later > first + 1e-4).any() and (later >= first - 1e-6).all()
    with pytest.raises(ConfigError, match="sarsa_steps"):
        load_config(None, ["algo.sarsa_steps=-1"])


def test_sigmoid_critic_backs_up_the_max_of_its_own_bins_on_pi_betas_support():
    """critic="sigmoid": Q(b) = sigmoid(logit b), no division by pi_beta: a bin pi_beta seldom takes keeps
    the value its logit says (where the ratio critic would read p / pi = 5 there), and a bin off the support
    (pi < support_eps) is not backed up however high its logit."""
    z = torch.tensor([[0.0, 2.0, 1.0, 9.0, 5.0]])           # 4 bins + a dummy column, which the critic ignores
    pi = torch.tensor([[0.5, 0.3, 0.2 - 1e-6, 1e-6]]).log()
    r, disc = torch.zeros(1), torch.full((1,), 0.9)
    w = bellman_targets(z, pi, r, disc, 1e-4, "max", critic="sigmoid").item()
    assert w == pytest.approx(0.9 * torch.tensor(2.0).sigmoid().item(), rel=1e-5)
    mean = bellman_targets(z, pi, r, disc, 1e-4, "expectation", critic="sigmoid").item()
    want = 0.9 * (pi.exp()[0, :3] * z[0, :3].sigmoid()).sum() / pi.exp()[0, :3].sum()
    assert mean == pytest.approx(want.item(), rel=1e-4) and mean < w
    with pytest.raises(ValueError, match="critic"):
        bellman_targets(z, pi, r, disc, 1e-4, "max", critic="softmax")


def test_sigmoid_q_loss_fixed_point_shrinks_rare_bins_toward_zero():
    """One context, bins logged with frequencies pi and targets T: minimising sigmoid_q_loss over the data
    gives q_b = pi_b T_b / (pi_b + (1 - pi_b) c / (B - 1)) per bin (its docstring): the rarer the bin, the more
    its value shrinks, so a rare bin worth more falls below a frequent one; a padded bin (past the row's count) is
    pulled to 0, and the dummy column gets no gradient."""
    from qsft_robot.algo.qsft import sigmoid_q_loss

    pi, T, c, B = torch.tensor([0.7, 0.28, 0.02]), torch.tensor([0.6, 0.3, 0.9]), 1.0, 3
    actions = torch.tensor([0] * 70 + [1] * 28 + [2] * 2)
    w = T[actions]
    logits = torch.zeros(1, 5, requires_grad=True)        # 3 real bins, 1 padded bin, 1 dummy column
    opt = torch.optim.Adam([logits], lr=0.05)
    for _ in range(2000):
        opt.zero_grad()
        sigmoid_q_loss(logits.expand(100, 5), actions, w, c, torch.full((100,), B)).backward()
        opt.step()
    q = logits.detach()[0, :B].sigmoid()
    want = pi * T / (pi + (1 - pi) * c / (B - 1))
    torch.testing.assert_close(q, want, atol=2e-3, rtol=0)
    shrink = q / T
    assert shrink[2] < shrink[1] < shrink[0] and q[2] < q[0]   # the rarest bin, though worth most, ranks last
    assert logits.detach()[0, 3:].abs().max() == 0   # columns past every row's bins (the dummy): no gradient
    mixed = torch.zeros(2, 5, requires_grad=True)     # row 0 has 3 bins (column 3 padded), row 1 has 4
    sigmoid_q_loss(mixed, torch.tensor([0, 0]), torch.tensor([0.5, 0.5]), c, torch.tensor([3, 4])).backward()
    assert mixed.grad[0, 3] > 0 and mixed.grad[:, 4].abs().max() == 0   # the padded bin is pulled down
