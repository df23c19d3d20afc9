"""Does Q-SFT learn values? Q of the actions successful episodes took vs those failed episodes took.

Why this diagnostic: success rates mix perception, values and acting, and a mean Bellman target says
nothing about whether the values *separate* good from bad actions. At every episode's first frame
(where, on mixed-quality data, the operator chose a target) the logged action's value Q (algo.critic:
p_theta / pi_beta, or the bin's sigmoid; averaged over its D tokens) should end higher for episodes that
succeeded than for those that failed. When the backup saturates, both sit at ~1 and the fraction of
targets >= 0.999 says so (docs/design.md §2.8). Logged to train_log.csv and TensorBoard, drawn to
values.png at the end.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from qsft_robot.algo.qsft import bin_q_values
from qsft_robot.data.transitions import Transitions


class ValueProbe:
    def __init__(self, data: Transitions, max_frames: int = 256, seed: int = 0):
        first = np.flatnonzero(np.r_[True, data.episode[1:] != data.episode[:-1]])
        success = data.mc_return[first] > 0
        rng = np.random.default_rng(seed)
        pick = [rng.permutation(first[m])[: max_frames // 2] for m in (success, ~success)]
        self.index = np.concatenate(pick)
        self.success = np.r_[np.ones(len(pick[0]), bool), np.zeros(len(pick[1]), bool)]

    @property
    def usable(self) -> bool:
        """Needs both kinds of episode (a demonstration-only dataset has nothing to separate)."""
        return self.success.any() and (~self.success).any()

    @torch.no_grad()
    def measure(self, trainer, batch_size: int = 64) -> dict:
        ad, d = trainer.adapter, trainer.data
        q = []
        for start in range(0, len(self.index), batch_size):
            idx = self.index[start:start + batch_size]
            images, instr, state = d.inputs(idx)
            theta = ad.teacher_forced_logits(trainer.nets.theta, images, instr, state, d.tokens[idx],
                                             with_dummy=True)
            if trainer.pi_cache is not None:
                beh = trainer.pi_cache[idx].float()
            else:
                beh = ad.teacher_forced_logits(trainer.nets.pi_beta, images, instr, state, d.tokens[idx],
                                               with_dummy=False)
            tok = torch.as_tensor(d.tokens[idx])[..., None]
            values = bin_q_values(theta, beh.softmax(-1), trainer.cfg.algo.critic)
            q.append(values.gather(-1, tok)[..., 0].mean(-1))
        q = torch.cat(q).numpy()
        return {"q_success": float(q[self.success].mean()), "q_failure": float(q[~self.success].mean())}


def plot_values(log_csv: str | Path, png: str | Path) -> Path | None:
    """values.png: Q of successful vs failed episodes' first actions, mean target and saturation."""
    from qsft_robot.plots import pyplot, save_figure

    rows = [r for r in csv.DictReader(open(log_csv)) if r.get("q_success")]
    if not rows:
        return None
    plt = pyplot()
    step = [int(r["step"]) for r in rows]
    col = lambda k: [float(r[k]) if r.get(k) not in (None, "") else np.nan for r in rows]  # noqa: E731
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(step, col("q_success"), label="successful episodes", color="#2a6fdb")
    a.plot(step, col("q_failure"), label="failed episodes", color="#d8432e")
    a.set_xlabel("step")
    a.set_ylabel("Q of the logged first action")
    a.set_title("values at the decision frames")
    a.legend(fontsize=8)
    b.plot(step, col("mean_target"), label="mean target", color="black")
    b.plot(step, col("frac_saturated"), label="targets >= 0.999", color="#e5a03a")
    b.set_ylim(0, 1.05)
    b.set_xlabel("step")
    b.set_title("Bellman targets")
    b.legend(fontsize=8)
    return save_figure(fig, png)
