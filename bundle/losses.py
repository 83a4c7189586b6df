"""SSIM-weighted reconstruction loss."""

from __future__ import annotations

import torch
from monai.losses import SSIMLoss
from torch import nn

from bundle.errors import InputError


class SSIMWeightedLoss(nn.Module):
    """`w * (1 - SSIM) + (1 - w) * pixel_loss`, with SSIM from `monai.losses.SSIMLoss`.

    By default SSIM is computed on each slice scaled by its reference maximum (data range 1), so
    the loss is independent of the intensity scale of the slice (MRI magnitudes); with a fixed
    `data_range` (CT: 1.0, the HU window on the [0, 1] scale) the images are compared on that
    scale instead, so air-only patches (maximum near 0) do not turn the SSIM into a noise detector.
    The pixel loss is on the raw values. A target with one channel more than the prediction
    carries, in that last channel, a per-pixel weight of the pixel loss (PET's lesion emphasis,
    `bundle.transforms.PETScanBatch(lesion_weight=...)`); the SSIM term ignores it.

    Args:
        ssim_weight: w in [0, 1] (0.84 as in Zhao et al., "Loss functions for image restoration
            with neural networks", 2017).
        pixel_loss: "l1" or "mse".
        win_size: SSIM window size.
        kernel_type: "gaussian" or "uniform".
        data_range: a fixed SSIM data range, or None for each reference's maximum.
    """

    def __init__(
        self,
        ssim_weight: float = 0.84,
        pixel_loss: str = "l1",
        win_size: int = 11,
        kernel_type: str = "gaussian",
        data_range: float | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= ssim_weight <= 1.0:
            raise InputError(f"ssim_weight must be in [0, 1], got {ssim_weight!r}")
        if pixel_loss not in ("l1", "mse"):
            raise InputError(f"unknown pixel_loss {pixel_loss!r}: expected 'l1' or 'mse'")
        self.ssim_weight = ssim_weight
        if data_range is not None and not float(data_range) > 0:
            raise InputError(f"data_range must be positive, got {data_range!r}")
        self.data_range = None if data_range is None else float(data_range)
        self.ssim = SSIMLoss(spatial_dims=2, data_range=1.0, win_size=win_size, kernel_type=kernel_type)
        self.pixel = nn.L1Loss() if pixel_loss == "l1" else nn.MSELoss()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target: (B, 1, H, W), or target (B, 2, H, W) with the pixel weights. Returns a scalar."""
        weight = None
        if target.ndim == pred.ndim and target.shape[1] == pred.shape[1] + 1:
            target, weight = target[:, :-1], target[:, -1:].float()
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        pred, target = pred.float(), target.float()
        if self.data_range is not None:
            scale = torch.full((target.shape[0],) + (1,) * (target.ndim - 1), self.data_range, device=target.device)
        else:
            scale = target.flatten(1).amax(dim=1).clamp_min(1e-6).view(-1, *([1] * (target.ndim - 1)))
        ssim_term = self.ssim(pred / scale, target / scale)
        if weight is None:
            pixel = self.pixel(pred, target)
        else:
            diff = pred - target
            pixel = (weight * (diff.abs() if isinstance(self.pixel, nn.L1Loss) else diff**2)).mean()
        return self.ssim_weight * ssim_term + (1.0 - self.ssim_weight) * pixel
