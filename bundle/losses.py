"""SSIM-weighted reconstruction loss."""

from __future__ import annotations

import torch
from monai.losses import SSIMLoss
from torch import nn

from bundle.errors import InputError


class SSIMWeightedLoss(nn.Module):
    """`w * (1 - SSIM) + (1 - w) * pixel_loss`, with SSIM from `monai.losses.SSIMLoss`.

    SSIM is computed on each slice scaled by its reference maximum (data range 1), so the loss is
    independent of the intensity scale of the slice; the pixel loss is on the raw values.

    Args:
        ssim_weight: w in [0, 1] (0.84 as in Zhao et al., "Loss functions for image restoration
            with neural networks", 2017).
        pixel_loss: "l1" or "mse".
        win_size: SSIM window size.
        kernel_type: "gaussian" or "uniform".
    """

    def __init__(
        self, ssim_weight: float = 0.84, pixel_loss: str = "l1", win_size: int = 11, kernel_type: str = "gaussian"
    ) -> None:
        super().__init__()
        if not 0.0 <= ssim_weight <= 1.0:
            raise InputError(f"ssim_weight must be in [0, 1], got {ssim_weight!r}")
        if pixel_loss not in ("l1", "mse"):
            raise InputError(f"unknown pixel_loss {pixel_loss!r}: expected 'l1' or 'mse'")
        self.ssim_weight = ssim_weight
        self.ssim = SSIMLoss(spatial_dims=2, data_range=1.0, win_size=win_size, kernel_type=kernel_type)
        self.pixel = nn.L1Loss() if pixel_loss == "l1" else nn.MSELoss()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target: (B, 1, H, W). Returns a scalar."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        pred, target = pred.float(), target.float()
        scale = target.flatten(1).amax(dim=1).clamp_min(1e-6).view(-1, *([1] * (target.ndim - 1)))
        ssim_term = self.ssim(pred / scale, target / scale)
        return self.ssim_weight * ssim_term + (1.0 - self.ssim_weight) * self.pixel(pred, target)
