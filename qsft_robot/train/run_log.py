"""What a run writes while it trains: train_log.csv, TensorBoard scalars and a log line per logged step."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

logger = logging.getLogger("qsft_robot.train.trainer")
LOG_FIELDS = ["step", "loss", "q_loss", "bc_loss", "mean_target", "frac_saturated", "mean_p_data", "pi_entropy",
              "q_success", "q_failure", "lr", "step_time", "eval_success"]


class RunLog:
    """CSV (appended to on resume), TensorBoard on the main process. Use as a context manager."""

    def __init__(self, run_dir: Path, rank: int, main: bool, tensorboard: bool, step: int):
        self.path = run_dir / ("train_log.csv" if main else f".train_log.rank{rank}.csv")
        self.new = not self.path.exists() or step == 0
        self.run_dir, self.main, self.tensorboard, self.step = run_dir, main, tensorboard, step
        self.fh = self.writer = self.tb = None

    def __enter__(self) -> RunLog:
        if self.main and self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step or None)
        self.fh = open(self.path, "w" if self.new else "a", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=LOG_FIELDS)
        if self.new:
            self.writer.writeheader()
        return self

    def write(self, row: dict) -> None:
        self.writer.writerow({k: row.get(k) for k in LOG_FIELDS})
        self.fh.flush()
        if self.tb is not None:
            for k in LOG_FIELDS[1:]:
                if row.get(k) is not None:
                    self.tb.add_scalar(f"train/{k}", row[k], row["step"])
        logger.info("step %d loss %.4f target %.3f (>=0.999: %.2f) p_data %.3f", row["step"], row["loss"],
                    row["mean_target"], row.get("frac_saturated", 0.0), row["mean_p_data"])

    def __exit__(self, *exc) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.close()
