"""Q-value inspection: what the model values, bin by bin, for one frame and instruction.

For each action dimension d (conditioned on the greedy tokens chosen for dimensions < d, as when
acting) it plots p_theta (Q-SFT's conservative Q-value, docs/design.md §2.5) and pi_beta over the bins, marks
the bin the policy picks and, for a dataset frame, the bin the operator took. Where p_theta sits well
below pi_beta the model has learned that the logged action leads nowhere; where they agree it is
imitating. With algo.critic=sigmoid the curve is the bin's Q = sigmoid(logit) itself, on its own [0, 1] scale.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _centres(tok, d: int) -> np.ndarray:
    grid = np.zeros((tok.bins[d], tok.num_dims), dtype=np.int64)
    grid[:, d] = np.arange(tok.bins[d])
    return tok.decode(grid)[:, d]


@torch.no_grad()
def logged_q_values(policy, images, instructions: list[str], states, tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """Q (algo.critic: p_theta / pi_beta, or the bin's sigmoid; bin_q_values) and pi_beta of given action tokens
    (N, D), each dimension scored after the earlier ones (one teacher-forced pass per network): what a critic
    says of actions someone else chose, a log's or an oracle's. images (N, cams, H, W, 3)."""
    from qsft_robot.algo.qsft import bin_q_values

    ad = policy.adapter
    z = ad.teacher_forced_logits(ad.model, images, instructions, states, tokens, with_dummy=True)
    beta = ad.teacher_forced_logits(policy.behavior_model, images, instructions, states, tokens,
                                    with_dummy=False).softmax(-1)
    t = torch.as_tensor(np.asarray(tokens))[..., None]
    return bin_q_values(z, beta, ad.critic).gather(-1, t)[..., 0], beta.gather(-1, t)[..., 0]


@torch.no_grad()
def qvalue_table(policy, image: np.ndarray, instruction: str, state=None) -> dict:
    """image (H, W, 3) or (cams, H, W, 3) uint8 -> {'chosen': (D,), 'p_theta': [D x (B_d,)], 'pi_beta': ...}."""
    ad = policy.adapter
    images = np.asarray(image)[None]
    states = None if state is None else np.asarray(state, dtype=np.float32)[None]
    chosen = policy.act_tokens(images if images.ndim == 5 else images[:, None], [instruction], states)
    is_qsft = policy.behavior_model is not None   # a BC checkpoint has pi_beta only
    beh = policy.behavior_model if is_qsft else ad.model
    out = {"chosen": chosen[0], "p_theta": [], "pi_beta": [], "bins": ad.action_tokenizer.bins, "critic": ad.critic,
           "centres": [_centres(ad.action_tokenizer, d) for d in range(ad.num_dims)]}
    pi = ad.teacher_forced_logits(beh, images, [instruction], states, chosen, with_dummy=False)[0].softmax(-1)
    q = None
    if is_qsft:   # what the policy ranks: p_theta (~ pi_beta * Q) for the ratio critic, Q itself for the sigmoid one
        z = ad.teacher_forced_logits(ad.model, images, [instruction], states, chosen,
                                     with_dummy=ad.leftover == "dummy")[0]
        q = z.sigmoid() if ad.critic == "sigmoid" else z.softmax(-1)
    for d, nb in enumerate(ad.action_tokenizer.bins):
        out["pi_beta"].append(pi[d, :nb].numpy())
        out["p_theta"].append(None if q is None else q[d, :nb].numpy())
    return out


def plot_qvalues(table: dict, path: str | Path, image: np.ndarray | None = None, title: str = "",
                 data_tokens=None) -> Path:
    from qsft_robot.plots import pyplot, save_figure
    plt = pyplot()

    D = len(table["pi_beta"])
    cols = D + (image is not None)
    fig, axes = plt.subplots(1, cols, figsize=(3.0 * cols, 3.0), squeeze=False)
    axes = axes[0]
    if image is not None:
        img = np.asarray(image)
        axes[0].imshow(img if img.ndim == 3 else np.concatenate(list(img), axis=1))
        axes[0].set_axis_off()
        axes[0].set_title("observation", fontsize=9)
    for d in range(D):
        ax = axes[d + (image is not None)]
        x = np.arange(len(table["pi_beta"][d]))
        ax.bar(x, table["pi_beta"][d], color="#bbbbbb", label="π_β")
        if table["p_theta"][d] is not None:
            ax.step(x, table["p_theta"][d], where="mid", color="#2a6fdb",
                    label="Q = σ(logit)" if table.get("critic") == "sigmoid" else "p_θ (Q)")
        ax.axvline(table["chosen"][d], color="#2ca02c", ls="--", lw=1, label="chosen")
        if data_tokens is not None:
            ax.axvline(int(data_tokens[d]), color="#d62728", ls=":", lw=1, label="logged")
        c = table["centres"][d]
        ax.set_title(f"dim {d}: bins {c[0]:+.2f}..{c[-1]:+.2f}", fontsize=9)
        ax.set_xlabel("bin", fontsize=8)
        if d == 0:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=110)
