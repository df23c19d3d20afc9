"""Per-dimension action binning (RT-2 / OpenVLA convention, docs/design.md §2.1).

Bin edges split [q01_d, q99_d] uniformly so one outlier cannot waste the bins; values outside are
clipped. A checkpoint always decodes with the statistics saved beside it, never recomputed ones.

An action chunk (algo.chunk = k env steps per decision) is k actions in one token sequence: its k*D tokens
repeat the D dims' statistics, so every token-level consumer (losses, masks, decoding) sees one more
ordinary action dimension per token, and only acting reshapes the tokens back into k steps (decode_chunk).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ACTION_TOKEN_FMT = "<act_{}>"


class InvalidActionError(ValueError):
    """Raised for NaN/inf actions or actions of the wrong width."""


@dataclass
class ActionTokenizer:
    low: list[float]          # q01 per dimension
    high: list[float]         # q99 per dimension
    bins: list[int]           # number of bins per dimension (2 for a binary gripper)
    vocab_ids: list[int] = field(default_factory=list)  # vocabulary id of bin k (shared by all dims)
    mapping: str = "added_tokens"  # or "least_used" (OpenVLA: overwrite the B least-used ids)
    # the dataset's names of the action dims (LeRobot features.action.names), so that a robot can check that
    # dim d drives the joint it was recorded from; None where the data has none (and in older checkpoints)
    names: list[str] | None = None
    chunk: int = 1            # env steps per decision: low/high/bins hold the D dims' statistics k times over

    def __post_init__(self) -> None:
        if not (len(self.low) == len(self.high) == len(self.bins)):
            raise ValueError("low, high and bins must have one entry per action dimension")
        for d, (lo, hi, nb) in enumerate(zip(self.low, self.high, self.bins)):
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise InvalidActionError(f"action dim {d}: non-finite range [{lo}, {hi}]")
            if nb < 2:
                raise ValueError(f"action dim {d}: needs at least 2 bins, got {nb}")
        if self.chunk < 1 or len(self.bins) % self.chunk:
            raise ValueError(f"chunk {self.chunk} does not divide the {len(self.bins)} action tokens")
        if self.names is not None and len(self.names) != self.action_dim:
            raise ValueError(f"{len(self.names)} action names for {self.action_dim} action dims")

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def fit(cls, actions: np.ndarray, num_bins: int = 256, per_dim_bins: dict[int, int] | None = None,
            quantiles: tuple[float, float] = (0.01, 0.99), names: list[str] | None = None) -> "ActionTokenizer":
        actions = np.asarray(actions, dtype=np.float64)
        check_finite_actions(actions, where="tokenizer fit data")
        low = np.quantile(actions, quantiles[0], axis=0)
        high = np.quantile(actions, quantiles[1], axis=0)
        # A constant dimension still needs a non-empty range so that encode/decode stay defined.
        degenerate = high - low < 1e-6
        low = np.where(degenerate, low - 1e-3, low)
        high = np.where(degenerate, high + 1e-3, high)
        bins = [int((per_dim_bins or {}).get(d, num_bins)) for d in range(actions.shape[1])]
        return cls(low=low.tolist(), high=high.tolist(), bins=bins, names=None if names is None else list(names))

    @classmethod
    def from_stats(cls, q01, q99, num_bins: int = 256, per_dim_bins: dict[int, int] | None = None):
        """From dataset quantile statistics (LeRobot stats.json carries q01/q99)."""
        bins = [int((per_dim_bins or {}).get(d, num_bins)) for d in range(len(q01))]
        return cls(low=[float(x) for x in q01], high=[float(x) for x in q99], bins=bins)

    def chunked(self, k: int) -> "ActionTokenizer":
        """The tokenizer of k-step chunks of these actions: the same bins for each of the k steps."""
        if self.chunk != 1:
            raise ValueError(f"already a tokenizer of {self.chunk}-step chunks")
        return ActionTokenizer(low=self.low * k, high=self.high * k, bins=self.bins * k, vocab_ids=self.vocab_ids,
                               mapping=self.mapping, names=self.names, chunk=k)

    # ---- properties ---------------------------------------------------------------------------
    @property
    def num_dims(self) -> int:
        """Action tokens per decision (chunk x action_dim)."""
        return len(self.bins)

    @property
    def action_dim(self) -> int:
        """Dims of one env step's action (what a robot is commanded)."""
        return len(self.bins) // self.chunk

    @property
    def max_bins(self) -> int:
        """Width B of the logit rows: dims with fewer bins mask the rest (see bin_mask)."""
        return max(self.bins)

    @property
    def bin_widths(self) -> np.ndarray:
        return (np.asarray(self.high) - np.asarray(self.low)) / np.asarray(self.bins)

    def bin_mask(self) -> np.ndarray:
        """(D, B) bool: which bins exist for each dim (a 2-bin gripper uses bins 0 and 1 only)."""
        return np.arange(self.max_bins)[None, :] < np.asarray(self.bins)[:, None]

    # ---- encode / decode ----------------------------------------------------------------------
    def encode(self, actions: np.ndarray) -> np.ndarray:
        """(..., D) float -> (..., D) int64 bin ids, clipped into range."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape[-1] != self.num_dims:
            raise InvalidActionError(f"expected actions with {self.num_dims} dims, got shape {actions.shape}")
        check_finite_actions(actions, where="encode input")
        low, high, nb = np.asarray(self.low), np.asarray(self.high), np.asarray(self.bins)
        frac = (np.clip(actions, low, high) - low) / (high - low)
        return np.minimum((frac * nb).astype(np.int64), nb - 1)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """(..., D) bin ids -> (..., D) bin centres."""
        tokens = np.asarray(tokens, dtype=np.int64)
        nb = np.asarray(self.bins)
        if np.any(tokens < 0) or np.any(tokens >= nb):
            raise InvalidActionError(f"bin id out of range for bins={self.bins}: {tokens}")
        low, high = np.asarray(self.low), np.asarray(self.high)
        return low + (tokens + 0.5) * (high - low) / nb

    def decode_chunk(self, tokens: np.ndarray) -> np.ndarray:
        """(..., chunk * D) bin ids -> (..., chunk, D) bin centres: the env steps of each decision, in order."""
        actions = self.decode(tokens)
        return actions.reshape(*actions.shape[:-1], self.chunk, self.action_dim)

    def encode_chunks(self, actions: np.ndarray) -> np.ndarray:
        """(T, D) actions of one episode -> (T, chunk * D) tokens: row t holds steps t .. t+chunk-1. Past the
        end the last action repeats: the final chunks of a log are completed with what the operator last did
        (a terminal success ends the episode before they run)."""
        actions = np.asarray(actions)
        rows = np.minimum(np.arange(len(actions))[:, None] + np.arange(self.chunk)[None, :], len(actions) - 1)
        return self.encode(actions[rows].reshape(len(actions), -1))

    # ---- vocabulary mapping -------------------------------------------------------------------
    def token_strings(self) -> list[str]:
        return [ACTION_TOKEN_FMT.format(k) for k in range(self.max_bins)]

    def assign_vocab(self, tokenizer, model=None, mapping: str = "added_tokens",
                     token_counts: np.ndarray | None = None) -> None:
        """Give every bin a vocabulary id.

        added_tokens: add `<act_k>` tokens (embeddings resized when a model is given).
        least_used: overwrite the B ids least used in `token_counts` (OpenVLA), keeping vocab size.
        """
        self.mapping = mapping
        if mapping == "added_tokens":
            strings = self.token_strings()
            missing = [s for s in strings if s not in tokenizer.get_vocab()]
            if missing:
                tokenizer.add_tokens(missing, special_tokens=True)
                if model is not None:
                    model.resize_token_embeddings(len(tokenizer))
            self.vocab_ids = [int(tokenizer.convert_tokens_to_ids(s)) for s in strings]
        elif mapping == "least_used":
            # Never special or added ids: in real VLM tokenizers the ids past the base vocabulary are the
            # image-layout tokens (llava-1.5's <image>/<pad>, SmolVLM2's <row_i_col_j>, Qwen's
            # <|vision_*|>), and overwriting one of them breaks the model's image placement.
            reserved = set(getattr(tokenizer, "all_special_ids", [])) | set(tokenizer.get_added_vocab().values())
            if token_counts is None:
                # Without corpus counts, the OpenVLA heuristic: the last ids of the base vocabulary.
                base = int(getattr(tokenizer, "vocab_size", len(tokenizer)))
                order = [i for i in range(base - 1, -1, -1) if i not in reserved]
            else:
                order = [int(i) for i in np.argsort(token_counts, kind="stable") if int(i) not in reserved]
            if len(order) < self.max_bins:
                raise ValueError(f"least_used: the tokenizer has {len(order)} ordinary ids, "
                                 f"{self.max_bins} bins needed")
            self.vocab_ids = sorted(order[: self.max_bins])
        else:
            raise ValueError(f"unknown action-token mapping {mapping!r}")

    # ---- persistence --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ActionTokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"action tokenizer statistics not found: {path}")
        return cls(**json.loads(path.read_text()))


def check_finite_actions(actions: np.ndarray, where: str) -> None:
    bad = ~np.isfinite(actions)
    if bad.any():
        rows = np.unique(np.argwhere(bad)[:, 0])[:5].tolist()
        raise InvalidActionError(f"{where}: {int(bad.sum())} NaN/inf action values (first rows {rows})")
