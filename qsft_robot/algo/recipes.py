"""Named Q-SFT recipes: the config settings that make one Q-SFT variant, shared by the benchmark (one row
each) and the demo (the default one), so that a number in docs/results.md and `qsft-robot demo` train the
same thing. Each is applied on top of a BC model (pi_beta = that model, frozen; theta and theta_bar start
from it) and was chosen on held-out eval seeds (5000+) only (docs/results.md says how).

- n_step: every token of a step shares w = n logged rewards + gamma^n V(s_t+n), V the expected max of Q over
  N draws from pi_beta (EMaQ; N = 1, `expectation`, here) at s_t+n's prompt: a Bellman backup that carries
  value across episodes (it stitches), unsaturated. Cut logs bootstrap (data.end_is_terminal stays false).
- return_to_go: w = the logged discounted return: the logged policy's own value, calibrated, but it cannot
  join pieces of episodes; failed ends terminal.
Both: episode-weighted batches (failures run the whole time limit, so uniform frames are mostly failures).
"""
from __future__ import annotations

# every method's training settings, BC and Q-SFT alike (compact model, CPU budget); the benchmark's
# spec.overrides come after these
BASE_SETS = ["algo.num_bins=32", "train.lr=0.001", "train.warmup_steps=50", "algo.label_sigma=4"]
Q_RECIPES: dict[str, list[str]] = {
    "n_step": ["algo.target=n_step", "algo.n_step=5", "algo.next_value=expectation", "algo.polyak_alpha=0.05",
               "algo.gamma=0.9", "train.sampling=episode"],
    "return_to_go": ["algo.target=return_to_go", "data.end_is_terminal=true", "algo.gamma=0.9",
                     "train.sampling=episode"],
}
Q_LABELS = {"n_step": "Q-SFT (n-step)", "return_to_go": "Q-SFT (return-to-go)"}
# the demo's Q-SFT: n_step stitches where return-to-go cannot, but on the biased benchmark's arm it trails
# return-to-go by 0.09 (report seeds; docs/results.md), more than the 0.05 a default may give up
DEFAULT_RECIPE = "return_to_go"

