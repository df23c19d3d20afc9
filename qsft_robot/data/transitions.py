"""Episodes -> flat transition arrays for Q-SFT (obs_t, instruction, tokens_t, r_t, done_t, next index).

Reward rules (recorded in the checkpoint): 'success' puts reward 1 on the last step of successful
episodes (the paper's sparse setting); 'episodes:3,7,12' marks exactly those episode indices as the
successful ones; 'all_success' treats every episode as a successful demonstration; 'reward' uses
next.reward rescaled so that discounted returns stay in [0, 1] (docs/design.md §2.2); 'python:mod:fn' calls
fn(episode) -> per-step rewards. A truncated (time-limit) end is not terminal: it bootstraps; as logs
carry no observation after the last action, it bootstraps from its own last frame.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from qsft_robot.data.action_tokenizer import ActionTokenizer
from qsft_robot.data.episode import DatasetError, Episode
from qsft_robot.data.image_store import ImageStore

logger = logging.getLogger(__name__)


@dataclass
class Transitions:
    images: ImageStore        # (N, cams, H, W, 3) uint8, in memory or memmapped
    state: np.ndarray | None  # (N, S)
    instructions: list[str]
    tokens: np.ndarray        # (N, D) int64; (N, k*D) with k-step action chunks (steps t .. t+k-1)
    reward: np.ndarray        # (N,) float32
    done: np.ndarray          # (N,) bool: true termination after this step
    next_index: np.ndarray    # (N,) int64
    episode: np.ndarray       # (N,) int64
    reward_rule: str = "success"
    mc_return: np.ndarray | None = None  # (N,) float32: discounted return-to-go of the logged episode
    # n-step targets (data/n_step.py, set by use_n_step): where each transition bootstraps, and with what
    boot_index: np.ndarray | None = None
    boot_reward: np.ndarray | None = None
    boot_discount: np.ndarray | None = None
    boot_valid: np.ndarray | None = None   # false: the last action of a log cut short (no target)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def bootstrap_index(self) -> np.ndarray:
        """The state each transition's target reads: n steps on with n-step targets, else the next one."""
        return self.next_index if self.boot_index is None else self.boot_index

    def use_n_step(self, n: int, gamma: float) -> None:
        from qsft_robot.data.n_step import n_step_windows
        self.boot_index, self.boot_reward, self.boot_discount, self.boot_valid = n_step_windows(
            self.reward, self.done, self.next_index, n, gamma)

    def inputs(self, idx: np.ndarray, images=None) -> tuple:
        """(images, instructions, states) of transitions idx: what the model's prompt is built from.
        `images` replaces the stored frames (a batch prefetched by a DataLoader worker)."""
        st = self.state[idx] if self.state is not None else None
        return (self.images[idx] if images is None else images), [self.instructions[i] for i in idx], st


def choose_reward_rule(episodes: list[Episode], rule: str) -> str:
    if rule != "auto":
        return rule
    if any(e.meta.get("has_success", True) for e in episodes) and any(e.success for e in episodes):
        return "success"
    if all(e.rewards is not None for e in episodes) and any(float(np.max(e.rewards)) > 0 for e in episodes):
        return "reward"
    raise DatasetError("cannot label rewards: no episode is marked successful and no rewards are logged; "
                       "set data.reward (success | reward | python:module:function)")


def apply_success_rule(episodes: list[Episode], rule: str) -> None:
    """'episodes:<ids>' and 'all_success' set the success flag (and termination) they assert."""
    if rule == "all_success":
        chosen = None
    elif rule.startswith("episodes:"):
        try:
            chosen = {int(x) for x in rule.split(":", 1)[1].replace(" ", "").split(",") if x}
        except ValueError as e:
            raise DatasetError(f"data.reward={rule!r}: expected comma-separated episode indices") from e
    else:
        return
    for i, ep in enumerate(episodes):
        ep.success = chosen is None or int(ep.meta.get("episode_index", i)) in chosen
        ep.terminated = ep.success


def label_rewards(ep: Episode, rule: str, gamma: float, r_max: float) -> np.ndarray:
    T = len(ep)
    if rule in ("success", "all_success") or rule.startswith("episodes:"):
        r = np.zeros(T, np.float32)
        r[-1] = float(ep.success)
        return r
    if rule == "reward":
        return (np.asarray(ep.rewards, np.float32) * (1.0 - gamma) / max(r_max, 1e-8)).astype(np.float32)
    if rule.startswith("python:"):
        import importlib

        _, mod, fn = rule.split(":", 2)
        return np.asarray(getattr(importlib.import_module(mod), fn)(ep), np.float32)
    raise DatasetError(f"unknown reward rule {rule!r}")


def return_to_go(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = sum_k gamma^k r_{t+k} to the end of the log (a cut-off end adds nothing after it)."""
    out = np.zeros(len(rewards), np.float64)
    g = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        g = float(rewards[t]) + gamma * g
        out[t] = g
    return out


def build_transitions(episodes: list[Episode], tokenizer: ActionTokenizer, gamma: float,
                      reward_rule: str = "auto", cameras: list[str] | None = None,
                      images: ImageStore | None = None, end_is_terminal: bool = False) -> Transitions:
    """`images`: a store already holding every frame in order (memmap path); otherwise the
    episodes carry their frames and they are stacked in memory.

    end_is_terminal: every episode's last step ends it (a failed episode's time-out is a failure with
    value 0, not a cut to bootstrap through). Why it exists: bootstrapping through time-outs is exact
    for time-limit cut-offs, but then a failed episode never produces a low target and, starting from
    theta = pi_beta (Q = 1 everywhere), the values of the failing branch only decay by gamma per
    target-network refresh (measured: mean target 0.99-1.00 over 250 steps on base_goto_red)."""
    if not episodes:
        raise DatasetError("no episodes")
    rule = choose_reward_rule(episodes, reward_rule)
    apply_success_rule(episodes, rule)
    r_max = 1.0
    if rule == "reward":
        r_max = max(float(np.max(e.rewards)) for e in episodes)
        logger.warning("dense rewards rescaled by (1 - gamma) / r_max = %.4g so returns lie in [0, 1]",
                       (1 - gamma) / r_max)
    cams = cameras or sorted(episodes[0].images)
    imgs: list[np.ndarray] = []
    states, instr, toks, rew, ret, done, nxt, epi = [], [], [], [], [], [], [], []
    start = 0
    for e, ep in enumerate(episodes):
        T = len(ep)
        if images is None:
            missing = [c for c in cams if c not in ep.images]
            if missing:
                raise DatasetError(f"episode {e}: cameras {missing} missing (has {sorted(ep.images)})")
            imgs.append(np.stack([ep.images[c] for c in cams], axis=1))
        if ep.state is not None:
            states.append(ep.state)
        instr += [ep.instruction] * T
        toks.append(tokenizer.encode_chunks(ep.actions))   # (T, D), or (T, k*D) for k-step chunks
        rew.append(label_rewards(ep, rule, gamma, r_max))
        ret.append(return_to_go(rew[-1], gamma))
        d = np.zeros(T, bool)
        d[-1] = ep.terminated or end_is_terminal
        done.append(d)
        nxt.append(np.minimum(np.arange(start + 1, start + T + 1), start + T - 1))
        epi.append(np.full(T, e))
        start += T
    state = np.concatenate(states).astype(np.float32) if len(states) == len(episodes) else None
    if images is None:
        images = ImageStore(np.concatenate(imgs))
    elif len(images) != start:
        raise DatasetError(f"frame store holds {len(images)} frames, episodes have {start}")
    return Transitions(images, state, instr, np.concatenate(toks), np.concatenate(rew),
                       np.concatenate(done), np.concatenate(nxt), np.concatenate(epi), rule,
                       np.concatenate(ret).astype(np.float32))
