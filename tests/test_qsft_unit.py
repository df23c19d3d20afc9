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
