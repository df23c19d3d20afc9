"""The tiny model's ImageNet EfficientNet-Lite0 tower: weights, normalisation, frozen-feature cache."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qsft_robot.models.efficientnet_tower import (BLOCKS_FOR_STRIDE, CHANNELS_FOR_STRIDE, IMAGE_MEAN, IMAGE_STD,
                                                  EfficientNetLiteVisionConfig, grid_position_code, reference_model)


@pytest.fixture(scope="module")
def episodes():
    from qsft_robot.sim.collect import collect_episodes
    return collect_episodes("arm_reach_red", 2, "expert", seed=0, image_size=64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny VLM built, saved and reloaded the way every run loads it."""
    from transformers import AutoModelForImageTextToText

    from qsft_robot.models.tiny_vlm import build_tiny_vlm
    path = build_tiny_vlm(tmp_path_factory.mktemp("tiny"), image_size=64)
    return AutoModelForImageTextToText.from_pretrained(path).eval(), path


def test_reloaded_tower_reproduces_the_weights_package_reference(tiny):
    """A silent key-mapping mistake (a block left at its random init, BN statistics not loaded) changes
    these features; the reference is the weights package's own network and forward."""
    model, _ = tiny
    stride = model.config.vision_config.output_stride
    ref = reference_model()
    got = {}
    ref._blocks[BLOCKS_FOR_STRIDE[stride] - 1].register_forward_hook(lambda m, i, o: got.setdefault("f", o))
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref(x)
        ours = model.model.vision_tower.feature_map(x)
    assert ours.shape == (3, CHANNELS_FOR_STRIDE[stride], 64 // stride, 64 // stride) == got["f"].shape
    torch.testing.assert_close(ours, got["f"], atol=1e-5, rtol=1e-5)
    # and it is not the same for a randomly initialised tower of the same shape
    fresh = type(model.model.vision_tower)(model.model.vision_tower.config)
    with torch.no_grad():
        assert (fresh.feature_map(x) - got["f"]).abs().max() > 0.1


def test_grid_position_code_tells_every_cell_apart():
    """Each image token carries its cell's row and column: the code differs for every cell of the map,
    the row half is constant along a row and the column half along a column, and the lowest frequency is
    monotone (it orders the cells left to right)."""
    for h, w in [(4, 4), (6, 6), (8, 8), (3, 5)]:
        code = grid_position_code(h, w, 16)[0].reshape(h, w, 16)
        assert len({tuple(np.round(c.numpy(), 5)) for c in code.reshape(h * w, 16)}) == h * w
        torch.testing.assert_close(code[:, :, :8], code[:, :1, :8].expand(h, w, 8))   # rows
        torch.testing.assert_close(code[:, :, 8:], code[:1, :, 8:].expand(h, w, 8))   # columns
        assert (code[0, 1:, 8] > code[0, :-1, 8]).all() and code.abs().max() <= 1
    with pytest.raises(ValueError, match="multiple of 4"):
        EfficientNetLiteVisionConfig(position_channels=6)


def test_image_tokens_carry_features_then_position(tiny):
    """The tower's tokens: the layer-normalised feature map, row-major, then the position code; the
    projector reads both (its input width is their sum). Cached feature maps go through the same path."""
    model, _ = tiny
    tower, cfg = model.model.vision_tower, model.model.vision_tower.config
    assert cfg.position_channels == 16 and cfg.hidden_size == cfg.feature_channels + 16
    assert model.model.multi_modal_projector.linear_1.in_features == cfg.hidden_size
    x = torch.randn(2, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fmap = tower.feature_map(x)
        tokens = tower(x).last_hidden_state
        from_cache = tower(fmap).last_hidden_state
    side = fmap.shape[-1]
    assert tokens.shape == (2, side * side, cfg.hidden_size)
    flat = fmap.flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens[..., :cfg.feature_channels],
                               torch.nn.functional.layer_norm(flat, flat.shape[-1:]))
    torch.testing.assert_close(tokens[..., cfg.feature_channels:], grid_position_code(side, side, 16).expand(2, -1, -1))
    torch.testing.assert_close(from_cache, tokens)


def test_a_tower_saved_before_position_channels_loads_without_them(tmp_path):
    """A tiny model saved before position_channels existed has no position_channels in its config: it reloads as
    the model it was (feature tokens only), not with today's default."""
    cfg = EfficientNetLiteVisionConfig(image_size=64, output_stride=16)
    cfg.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved.pop("position_channels")
    (tmp_path / "config.json").write_text(json.dumps(saved))
    old = EfficientNetLiteVisionConfig.from_pretrained(tmp_path)
    assert (old.position_channels, old.hidden_size) == (0, 112)


def test_normalisation_is_the_weights_own():
    """With (x - 127) / 128 the reference classifies matplotlib's Grace Hopper photo as ImageNet class
    652 (military uniform): the normalisation the tower is fed matches the one the weights learned."""
    import matplotlib.cbook as cbook
    from PIL import Image
    img = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").resize((224, 224))
    x = torch.as_tensor(np.array(img)).permute(2, 0, 1)[None].float() / 255.0
    x = (x - torch.tensor(IMAGE_MEAN)[:, None, None]) / torch.tensor(IMAGE_STD)[:, None, None]
    with torch.no_grad():
        probs = reference_model()(x).softmax(-1)[0]
    assert int(probs.argmax()) == 652 and float(probs[652]) > 0.3


def test_tower_keeps_imagenet_batchnorm_statistics_in_train_mode(tiny):
    model, _ = tiny
    tower = model.model.vision_tower
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        before = tower.feature_map(x)
        model.train()
        during = tower.feature_map(x)
        model.eval()
    torch.testing.assert_close(before, during)


def test_cached_features_give_the_same_logits_as_pixels(tiny, episodes):
    from qsft_robot.data.action_tokenizer import ActionTokenizer
    from qsft_robot.models.families import freeze_vision_encoder
    from qsft_robot.models.vlm_adapter import VLMAdapter
    from transformers import AutoProcessor

    model, path = tiny
    freeze_vision_encoder(model)
    tok = ActionTokenizer.fit(np.concatenate([e.actions for e in episodes]), 16)
    processor = AutoProcessor.from_pretrained(path)
    VLMAdapter.add_action_vocab(model, processor, tok)
    ad = VLMAdapter(model, processor, tok)
    ep = episodes[0]
    frames = ep.images[sorted(ep.images)[0]][:4][:, None]
    instr, state, toks = [ep.instruction] * 4, ep.state[:4], tok.encode(ep.actions[:4])
    assert ad.feature_cache_key() is not None
    feats = ad.image_features(frames).astype(np.float16)
    from_pixels = ad.teacher_forced_logits(model, frames, instr, state, toks, with_dummy=True)
    from_feats = ad.teacher_forced_logits(model, feats, instr, state, toks, with_dummy=True)
    torch.testing.assert_close(from_feats, from_pixels, atol=2e-3, rtol=1e-3)


def test_feature_cache_is_reused_and_rebuilt_when_its_key_changes(tmp_path):
    from qsft_robot.data.feature_cache import cached_features
    from qsft_robot.data.image_store import ImageStore

    rng = np.random.default_rng(0)
    frames = ImageStore(rng.integers(0, 256, (10, 1, 8, 8, 3), dtype=np.uint8))
    calls = []

    def features(x):
        return x.astype(np.float32).mean(-1, keepdims=True).transpose(0, 1, 4, 2, 3) / 255.0

    def encode(x):
        calls.append(len(x))
        return features(x)

    key = {"weights": "w1", "image_size": 8, "output_stride": 16}
    a = cached_features(frames, encode, key, tmp_path, batch_size=4)
    assert calls == [4, 4, 2] and a.shape == (10, 1, 1, 8, 8) and a[3].dtype == np.float16
    np.testing.assert_allclose(a[3], features(frames[3:4])[0], atol=1e-3)
    b = cached_features(frames, encode, key, tmp_path)                     # same key: reused
    assert len(calls) == 3 and b.folder == a.folder
    cached_features(frames, encode, {**key, "output_stride": 8}, tmp_path)  # another stage: rebuilt
    changed = ImageStore(frames.array.copy())
    changed.array[7, 0, 0, 0, 0] ^= 1                                       # one pixel of one frame
    c = cached_features(changed, encode, key, tmp_path)
    assert len(calls) == 5 and c.folder != a.folder
    assert len({p.name for p in (tmp_path / "features").iterdir()}) == 3
    assert not any(p.name.endswith(".tmp") or ".tmp" in p.name for p in (tmp_path / "features").iterdir())
    assert json.loads((c.folder / "features.json").read_text())["shape"] == [10, 1, 1, 8, 8]


def test_feature_cache_keeps_the_copy_another_process_finished_first(tmp_path, monkeypatch):
    """Parallel benchmark seeds cache the same frames at once: the one that finishes second keeps the
    first one's folder (a reader may have it open) and removes its own temporary copy."""
    import os

    from qsft_robot.data.feature_cache import FeatureStore, cached_features
    from qsft_robot.data.image_store import ImageStore

    frames = ImageStore(np.random.default_rng(1).integers(0, 256, (6, 1, 8, 8, 3), dtype=np.uint8))
    key = {"weights": "w1", "image_size": 8, "output_stride": 16}
    first = {}

    def features(x):
        return x.astype(np.float32).mean(-1, keepdims=True).transpose(0, 1, 4, 2, 3) / 255.0

    def slow_encode(x):  # while this process encodes, "another process" (another pid) finishes the folder
        if not first:
            with monkeypatch.context() as m:
                m.setattr(os, "getpid", lambda: 4242)
                first["store"] = cached_features(frames, features, key, tmp_path)
            first["inode"] = (first["store"].folder / "features.json").stat().st_ino
        return features(x)

    second = cached_features(frames, slow_encode, key, tmp_path, batch_size=2)
    assert second.folder == first["store"].folder
    assert (second.folder / "features.json").stat().st_ino == first["inode"]   # the first copy, not replaced
    assert [p.name for p in (tmp_path / "features").iterdir()] == [second.folder.name]  # no temporary left
    np.testing.assert_allclose(second[4], features(frames[4:5])[0], atol=1e-3)
    # a broken folder under that name (a killed writer of an older release, a truncated file) is replaced
    (second.folder / FeatureStore.data_file).write_bytes(b"truncated")
    third = cached_features(frames, features, key, tmp_path)
    assert third.folder == second.folder and [p.name for p in (tmp_path / "features").iterdir()] == [third.folder.name]
    np.testing.assert_allclose(third[4], features(frames[4:5])[0], atol=1e-3)


def test_training_sim_eval_and_ros_normalise_a_frame_identically(tmp_path, episodes):
    """The same camera frame reaches the tower identically from the training data (cached features),
    from a sim observation (Policy.act, what `evaluate` calls) and from a ROS Image message (the node's
    conversion, bgr8 on the wire, then Policy.act)."""
    from qsft_robot.algo.policy import Policy
    from qsft_robot.config import load_config
    from qsft_robot.ros.image_conv import image_to_rgb, rgb_to_image_fields
    from qsft_robot.train.trainer import Trainer

    cfg = load_config(None, [f"train.out_dir={tmp_path / 'run'}", "algo.name=sft", "algo.num_bins=16",
                             f"data.feature_cache={tmp_path / 'cache'}", "train.tensorboard=false"])
    tr = Trainer(cfg, episodes)
    assert tr.data.images.dtype == np.float16  # the trainer reads cached features, not pixels
    i = 2
    frame = tr.data.images.array[i]  # feature map of transition i, from the training path
    raw = episodes[0].images[sorted(episodes[0].images)[0]][i]
    assert len(episodes[0]) > i
    seen = []
    tower = tr.model.model.vision_tower
    hook = tower.register_forward_pre_hook(lambda m, args, kw: seen.append(args[0].clone()), with_kwargs=True)
    policy = Policy(tr.adapter, mode="argmax_behavior")
    policy.act(raw[None, None], [episodes[0].instruction], episodes[0].state[i:i + 1])         # sim eval path
    msg = rgb_to_image_fields(raw, "bgr8")
    ros_frame = image_to_rgb(msg["encoding"], msg["height"], msg["width"], msg["step"], msg["data"])
    policy.act(ros_frame[None, None], [episodes[0].instruction], episodes[0].state[i:i + 1])   # ROS node path
    hook.remove()
    assert len(seen) == 2 and seen[0].shape[1] == 3
    torch.testing.assert_close(seen[0], seen[1], atol=0, rtol=0)
    with torch.no_grad():
        from_sim = tower.feature_map(seen[0])[0].numpy()
    np.testing.assert_allclose(frame[0].astype(np.float32), from_sim, atol=2e-2, rtol=2e-3)


def test_language_model_size_comes_from_the_config(tmp_path):
    """model.text_hidden / text_layers size the tiny model's language model (the tower stays EfficientNet)."""
    from types import SimpleNamespace

    from qsft_robot.config import load_config
    from qsft_robot.data.action_tokenizer import ActionTokenizer
    from qsft_robot.train.model_setup import build_models

    default = load_config(None, [])
    assert (default.model.text_hidden, default.model.text_layers) == (96, 2)
    cfg = load_config(None, ["model.text_hidden=96", "model.text_layers=3"])
    tok = ActionTokenizer.fit(np.random.default_rng(0).uniform(-1, 1, (100, 2)), 8)
    model, _ = build_models(cfg, tmp_path, [SimpleNamespace(instruction="reach the red block")], tok)
    text = model.config.text_config
    assert (text.hidden_size, text.num_hidden_layers) == (96, 3)
    assert model.config.vision_config.model_type == "efficientnet_lite_vision"
    assert model.model.multi_modal_projector.linear_2.out_features == 96
