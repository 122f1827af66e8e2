"""The denoiser network: a class-conditional diffusers ``UNet2DModel`` with an extra null class."""

from __future__ import annotations

from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention, AttnProcessor

from easyhard.config import NetworkConfig


def build_unet(
    cfg: NetworkConfig, image_shape: tuple[int, int, int], n_classes: int
) -> UNet2DModel:
    """A UNet for ``image_shape`` (C, H, W) with ``n_classes + 1`` class embeddings.

    Label ``n_classes`` is the null class used for classifier-free guidance. The time embedding is
    ``positional`` and is fed EDM's ``c_noise = ln(sigma) / 4`` (see :mod:`easyhard.edm`); diffusers'
    ``fourier`` embedding takes a log and rescales internally and would clash with EDM
    preconditioning. Attention uses the classic processor, which ``torch.func.vmap`` batches.
    """
    channels, height, width = image_shape
    levels = len(cfg.channels)
    for size in (height, width):
        s = size
        for _ in range(levels - 1):
            if s % 2:
                raise ValueError(
                    f"network: {levels} resolution levels need image size {size} divisible by "
                    f"{2 ** (levels - 1)}; use fewer network.channels entries"
                )
            s //= 2
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    unet = UNet2DModel(
        sample_size=(height, width),
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=cfg.norm_groups,
        num_class_embeds=n_classes + 1,
        time_embedding_type="positional",
        attention_head_dim=min(cfg.channels),
        dropout=cfg.dropout,
    )
    # The classic attention processor (bmm + softmax) has torch.func batching rules; the fused SDPA
    # kernel does not on CPU and falls back to a slow per-example loop under vmap.
    for module in unet.modules():
        if isinstance(module, Attention):
            module.set_processor(AttnProcessor())
    return unet


def count_parameters(model: UNet2DModel) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
