"""Training losses (docs/reference/model.md section 6), scaled to what installs offline.

- Pixel MSE on [-1, 1].
- ``FeatureDistance``: the perceptual term. LPIPS backbones cannot be had offline, so this is the LPIPS
  recipe on a different, frozen backbone: unit-normalised EfficientNet-Lite0 activations (blocks 1, 3, 6, 10),
  squared difference, spatial mean, summed over taps, no learned heads. It is *not* LPIPS; we call it
  "EfficientNet feature distance" everywhere.
- PatchGAN (``discriminator.py``) hinge loss, switched on at ``disc_start``.
- Cell colour (optional, ``w_colour``): MSE between the reconstruction's and the input's mean colour over each
  token cell (16x16 pixels): the low-frequency part of the pixel MSE, weighted up so that the colour each
  token carries is not traded away for edges.
- Commitment (from the quantizer, averaged over all depths).
- Semantic: 1 - cos per token, plus the 4-fold chunked cosine, against the frozen teacher's features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evotok.model.encoder import EfficientNetBackbone, SemanticBackbone


class FeatureDistance(nn.Module):
    def __init__(self, backbone: EfficientNetBackbone, taps: tuple[int, ...] = (1, 3, 6, 10)) -> None:
        super().__init__()
        self.backbone = backbone
        self.taps = taps

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x, y ``(B, 3, H, W)`` in [-1, 1] -> scalar."""
        fx = self.backbone.feature_maps(x, self.taps)
        fy = self.backbone.feature_maps(y, self.taps)
        total = x.new_zeros(())
        for a, b in zip(fx, fy, strict=True):
            a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            total = total + ((a - b) ** 2).sum(dim=1).mean()
        return total


def cell_colour_loss(recon: Tensor, target: Tensor, cell: int = 16) -> Tensor:
    """recon, target ``(B, 3, H, W)`` in [-1, 1] -> MSE of their per-cell mean colours (``cell`` x ``cell``)."""
    return F.mse_loss(F.avg_pool2d(recon, cell), F.avg_pool2d(target, cell))


def semantic_loss(pred: Tensor, target: Tensor, folds: int = 4) -> tuple[Tensor, Tensor]:
    """pred, target ``(B, N, C)`` -> (mean 1-cos per token, mean 1-cos per token and chunk)."""
    cos = 1.0 - F.cosine_similarity(pred, target, dim=-1).mean()
    b, n, c = pred.shape
    chunk = c // folds
    p = pred[..., : chunk * folds].reshape(b, n, folds, chunk)
    t = target[..., : chunk * folds].reshape(b, n, folds, chunk)
    fold = 1.0 - F.cosine_similarity(p, t, dim=-1).mean()
    return cos, fold


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def hinge_g_loss(fake: Tensor) -> Tensor:
    return -fake.mean()


@torch.no_grad()
def teacher_features(teacher: SemanticBackbone, images: Tensor) -> Tensor:
    """Frozen teacher's ``(B, h*w, C)`` features of the input images (in [-1, 1])."""
    return teacher(images.clamp(-1.0, 1.0)).float()
