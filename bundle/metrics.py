"""Reconstruction metrics aggregated per volume, with the fastMRI conventions.

Each volume's slices are compared on the scale of the reference volume's maximum (fastMRI:
`data_range = gt.max()` over the volume):
- SSIM: mean over the volume's slices of 2D SSIM (`monai.metrics.SSIMMetric`);
- PSNR: `10 log10(max^2 / MSE)` with the MSE over all voxels of the volume;
- NMSE: `||pred - ref||^2 / ||ref||^2` over the volume.
Then the mean over volumes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from monai.metrics import SSIMMetric
from monai.utils import convert_to_tensor

METRICS = ("ssim", "psnr", "nmse", "mse")


class VolumeAccumulator:
    """Sums per volume from which SSIM, PSNR, NMSE and MSE follow.

    Args:
        win_size, kernel_type: SSIM window (MONAI's default 11 Gaussian, sigma 1.5; fastMRI's
            evaluation uses a 7x7 "uniform" window).
    """

    def __init__(self, win_size: int = 11, kernel_type: str = "gaussian") -> None:
        self.ssim = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=win_size, kernel_type=kernel_type)
        self.win_size = win_size
        self.volumes: dict[str, dict[str, float]] = {}

    def add(self, pred: torch.Tensor, ref: torch.Tensor, volume: str, volume_max: float) -> None:
        """Add one or more slices of `volume`: pred and ref are (N, 1, H, W) or (1, H, W)."""
        pred = convert_to_tensor(pred, track_meta=False).detach().float()
        ref = convert_to_tensor(ref, track_meta=False).detach().float()
        if pred.shape != ref.shape:
            raise ValueError(f"{volume}: prediction {tuple(pred.shape)} and reference {tuple(ref.shape)} differ")
        if pred.ndim == 3:
            pred, ref = pred[None], ref[None]
        if min(pred.shape[-2:]) < self.win_size:
            raise ValueError(f"{volume}: slices of {tuple(pred.shape[-2:])} are smaller than the SSIM window {self.win_size}")
        if not math.isfinite(volume_max) or volume_max <= 0:
            raise ValueError(f"{volume}: the reference volume maximum is {volume_max}; metrics are undefined")
        p, r = pred / volume_max, ref.to(pred.device) / volume_max
        acc = self.volumes.setdefault(volume, {"ssim_sum": 0.0, "slices": 0, "sse": 0.0, "voxels": 0, "ref2": 0.0})
        acc["ssim_sum"] += float(self.ssim(p, r).sum())
        acc["slices"] += p.shape[0]
        acc["sse"] += float(((p - r) ** 2).sum(dtype=torch.float64))
        acc["voxels"] += p.numel()
        acc["ref2"] += float((r**2).sum(dtype=torch.float64))

    def per_volume(self) -> dict[str, dict[str, float]]:
        """{volume: {"ssim", "psnr", "nmse", "mse"}}, the MSE on the [0, max] scale of the volume."""
        out = {}
        for name, a in self.volumes.items():
            if a["ref2"] == 0:
                raise ValueError(f"{name}: the reference is all zeros; PSNR and NMSE are undefined")
            mse = a["sse"] / a["voxels"]
            out[name] = {
                "ssim": a["ssim_sum"] / a["slices"],
                "psnr": 10 * math.log10(1.0 / mse) if mse > 0 else math.inf,
                "nmse": a["sse"] / a["ref2"],
                "mse": mse,
            }
        return out


def _per_sample(batch, output, pred_key: str, label_key: str):
    """(pred, label, filename, volume_max) per sample from a decollated or batched engine state."""
    if isinstance(output, dict):  # not decollated: batched tensors and lists
        for i in range(len(output[pred_key])):
            yield output[pred_key][i], output[label_key][i], batch["filename"][i], float(batch["volume_max"][i])
    else:
        for b, o in zip(batch, output):
            yield o[pred_key], o[label_key], b["filename"], float(b["volume_max"])


class VolumeReconMetric(Metric):
    """Ignite metric: the mean over volumes of a per-volume reconstruction metric.

    It reads `pred_key` ("pred" for the network, "image" for its zero-filled input) and
    `label_key` from the engine output, and "filename" and "volume_max" from the batch (the
    items of `bundle.data.SliceDataset`). The per-volume values are kept in
    `engine.state.metric_details[name]` as {filename: value}.

    Args:
        metric: "ssim", "psnr", "nmse" or "mse".
        pred_key, label_key: keys of the engine output to compare.
        win_size, kernel_type: SSIM window.
    """

    def __init__(
        self,
        metric: str = "ssim",
        pred_key: str = "pred",
        label_key: str = "label",
        win_size: int = 11,
        kernel_type: str = "gaussian",
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")
        self.metric, self.pred_key, self.label_key = metric, pred_key, label_key
        self.win_size, self.kernel_type = win_size, kernel_type
        super().__init__(output_transform=lambda x: x)

    def reset(self) -> None:
        self.acc = VolumeAccumulator(self.win_size, self.kernel_type)

    def update(self, output: Sequence) -> None:
        """output: (pred, label, filename, volume_max) for one slice or a stack of one volume."""
        pred, label, filename, volume_max = output
        self.acc.add(pred, label, str(filename), float(volume_max))

    def iteration_completed(self, engine: Engine) -> None:
        for sample in _per_sample(engine.state.batch, engine.state.output, self.pred_key, self.label_key):
            self.update(sample)

    def compute(self) -> float:
        values = self.values()
        if not values:
            raise ValueError("no volumes were evaluated")
        return sum(values.values()) / len(values)

    def values(self) -> dict[str, float]:
        return {k: v[self.metric] for k, v in self.acc.per_volume().items()}

    def completed(self, engine: Engine, name: str) -> None:
        super().completed(engine, name)
        if getattr(engine.state, "metric_details", None) is None:
            engine.state.metric_details = {}
        engine.state.metric_details[name] = self.values()
