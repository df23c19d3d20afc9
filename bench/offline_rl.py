"""BC vs filtered BC vs Q-SFT on mixed-quality MuJoCo data: docs/results.md's benchmark table and chart.

    python bench/offline_rl.py [--tasks arm_reach_red base_goto_red] [--seeds 0 1 2] [--out outputs/offline_rl]

Same as `qsft-robot benchmark` (all its options apply); see qsft_robot/benchmark.py for the protocol.
"""
from __future__ import annotations

import sys

from qsft_robot.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
