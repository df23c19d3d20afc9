from __future__ import annotations

import numpy as np
import pytest

from qsft_robot.data.action_tokenizer import ActionTokenizer, InvalidActionError


def test_round_trip_error_is_within_half_a_bin():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5000, 3)) * [0.1, 1.0, 5.0]
    tok = ActionTokenizer.fit(a, num_bins=64)
    inside = np.all((a >= tok.low) & (a <= tok.high), axis=1)
    err = np.abs(tok.decode(tok.encode(a[inside])) - a[inside])
    assert np.all(err <= tok.bin_widths / 2 + 1e-12)


def test_out_of_range_values_clip_to_edge_bins():
    tok = ActionTokenizer(low=[-1.0], high=[1.0], bins=[10])
    assert tok.encode(np.array([[-5.0], [5.0]])).ravel().tolist() == [0, 9]


def test_per_dim_bins_for_binary_gripper():
    a = np.stack([np.linspace(-1, 1, 100), np.where(np.arange(100) % 2, 1.0, -1.0)], 1)
    tok = ActionTokenizer.fit(a, num_bins=32, per_dim_bins={1: 2})
    assert tok.bins == [32, 2]
    assert set(tok.encode(a)[:, 1].tolist()) == {0, 1}
    assert tok.bin_mask()[1].sum() == 2


def test_nan_and_inf_raise_clear_error():
    tok = ActionTokenizer(low=[0.0, 0.0], high=[1.0, 1.0], bins=[4, 4])
    with pytest.raises(InvalidActionError, match="NaN/inf"):
        tok.encode(np.array([[0.5, np.nan]]))
    with pytest.raises(InvalidActionError, match="NaN/inf"):
        ActionTokenizer.fit(np.array([[0.0], [np.inf]]))


def test_save_load_round_trip(tmp_path):
    tok = ActionTokenizer(low=[0.0, -2.0], high=[1.0, 2.0], bins=[8, 2], vocab_ids=list(range(100, 108)))
    tok.save(tmp_path / "t.json")
    back = ActionTokenizer.load(tmp_path / "t.json")
    assert back == tok
    with pytest.raises(FileNotFoundError):
        ActionTokenizer.load(tmp_path / "missing.json")


def test_vocab_mapping_added_and_least_used(tmp_path):
    from qsft_robot.models.tiny_vlm import build_tokenizer

    hf_tok = build_tokenizer()
    n0 = len(hf_tok)
    tok = ActionTokenizer(low=[0.0], high=[1.0], bins=[16])
    tok.assign_vocab(hf_tok, mapping="added_tokens")
    assert len(hf_tok) == n0 + 16 and hf_tok.convert_ids_to_tokens(tok.vocab_ids[3]) == "<act_3>"
    counts = np.arange(len(hf_tok))[::-1].astype(float)  # last ids least used
    tok2 = ActionTokenizer(low=[0.0], high=[1.0], bins=[4])
    tok2.assign_vocab(hf_tok, mapping="least_used", token_counts=counts)
    assert len(tok2.vocab_ids) == 4 and len(hf_tok) == n0 + 16
    assert not set(tok2.vocab_ids) & set(hf_tok.all_special_ids)
    # without counts (OpenVLA's last ids), never an added or special id: in real VLM tokenizers those
    # are the image-layout tokens, which must keep their meaning
    hf_tok.add_tokens(["<image>", "<row_1_col_1>"], special_tokens=True)
    tok3 = ActionTokenizer(low=[0.0], high=[1.0], bins=[8])
    tok3.assign_vocab(hf_tok, mapping="least_used")
    reserved = set(hf_tok.get_added_vocab().values()) | set(hf_tok.all_special_ids)
    assert len(tok3.vocab_ids) == 8 and not set(tok3.vocab_ids) & reserved
    assert max(tok3.vocab_ids) < hf_tok.vocab_size


def test_chunk_tokens_hold_the_next_k_steps_and_decode_back_in_order(tmp_path):
    """algo.chunk: row t of an episode's tokens is steps t .. t+k-1 (the last action repeated past the end), with
    the same bins for every step of the chunk; decode_chunk gives the steps back in the order to run them."""
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(7, 3)).astype(np.float32)
    one = ActionTokenizer.fit(actions, num_bins=64, per_dim_bins={2: 2}, names=["x", "y", "grip"])
    tok = one.chunked(3)
    assert (tok.chunk, tok.num_dims, tok.action_dim, tok.bins) == (3, 9, 3, [64, 64, 2] * 3)
    tokens = tok.encode_chunks(actions)
    assert tokens.shape == (7, 9)
    np.testing.assert_array_equal(tokens[2], one.encode(actions[2:5]).reshape(-1))
    np.testing.assert_array_equal(tokens[6], np.tile(one.encode(actions[6]), 3))   # past the end: the last action
    np.testing.assert_array_equal(tokens[5, 3:], tokens[6, :6])
    steps = tok.decode_chunk(tokens)
    assert steps.shape == (7, 3, 3)
    np.testing.assert_allclose(steps[:, 0], one.decode(one.encode(actions)))
    tok.save(tmp_path / "t.json")
    back = ActionTokenizer.load(tmp_path / "t.json")
    assert back == tok and back.names == ["x", "y", "grip"]
    np.testing.assert_array_equal(one.encode_chunks(actions), one.encode(actions))   # chunk 1: one step per row
    with pytest.raises(ValueError, match="does not divide"):
        ActionTokenizer(low=[0.0] * 4, high=[1.0] * 4, bins=[8] * 4, chunk=3)
    with pytest.raises(ValueError, match="already"):
        tok.chunked(2)
