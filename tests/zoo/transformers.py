"""A small Vision Transformer and MLP-Mixer written the way timm writes them.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale", 2020, arXiv:2010.11929; Tolstikhin et al., "MLP-Mixer: An all-MLP Architecture for
Vision", 2021, arXiv:2105.01601. Structure follows ``timm.models.vision_transformer`` and
``timm.models.mlp_mixer``: ``PatchEmbed`` is a Conv2d with stride = patch, then
``flatten(2).transpose(1, 2)`` to (N, T, C) tokens; pre-norm residual blocks with
``nn.LayerNorm(C)`` on those tokens; ``Mlp`` is Linear, GELU, Linear. The ViT adds a cls token
and a learned position embedding and uses ``nn.MultiheadAttention(batch_first=True)``; the
Mixer transposes to (N, C, T) for its token-mixing MLP and averages tokens before the head.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int = 32, patch_size: int = 8, in_chans: int = 3,
                 embed_dim: int = 32) -> None:
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, C, H, W) -> (N, T, C)


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class VisionTransformer(nn.Module):
    def __init__(self, num_classes: int = 10, img_size: int = 32, patch_size: int = 8,
                 embed_dim: int = 32, depth: int = 2, num_heads: int = 4) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(
            torch.randn(1, self.patch_embed.num_patches + 1, embed_dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed
        x = self.blocks(x)
        x = self.norm(x)
        return self.head(x[:, 0])


class MixerBlock(nn.Module):
    def __init__(self, dim: int, seq_len: int, tokens_hidden: int, channels_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_tokens = Mlp(seq_len, tokens_hidden)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = Mlp(dim, channels_hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.mlp_channels(self.norm2(x))
        return x


class MlpMixer(nn.Module):
    def __init__(self, num_classes: int = 10, img_size: int = 32, patch_size: int = 8,
                 embed_dim: int = 32, depth: int = 2) -> None:
        super().__init__()
        self.stem = PatchEmbed(img_size, patch_size, 3, embed_dim)
        tokens = self.stem.num_patches
        self.blocks = nn.Sequential(
            *[MixerBlock(embed_dim, tokens, tokens * 2, embed_dim * 2) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.blocks(x)
        x = self.norm(x)
        return self.head(x.mean(dim=1))


def vit_style(num_classes: int = 10) -> VisionTransformer:
    return VisionTransformer(num_classes=num_classes)


def mlp_mixer_style(num_classes: int = 10) -> MlpMixer:
    return MlpMixer(num_classes=num_classes)
