"""Reconstruction metrics aggregated per volume, with the fastMRI conventions.

Each volume's slices are compared on the scale of the reference volume's maximum (fastMRI:
`data_range = gt.max()` over the volume):
- SSIM: mean over the volume's slices of 2D SSIM (`monai.metrics.SSIMMetric`);
- PSNR: `10 log10(max^2 / MSE)` with the MSE over all voxels of the volume;
- NMSE: `||pred - ref||^2 / ||ref||^2` over the volume;
- MSE: over the volume, on the [0, 1] scale of the reference maximum;
- SSIM_fastMRI: as SSIM but with fastMRI's evaluation setting (scikit-image's default: 7x7
  uniform window, sample covariance), so numbers compare with the fastMRI literature;
- VIF: pixel-domain visual information fidelity (Sheikh & Bovik 2006, the 4-scale "VIFp"), on
  images scaled to [0, 255] by the reference maximum (its noise variance 2 assumes that scale);
  information summed over the volume's slices, then the ratio.
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
from torch.nn import functional as F

METRICS = ("ssim", "ssim_fastmri", "psnr", "nmse", "mse", "vif")
VIF_NOISE_VAR = 2.0


def ssim_fastmri(pred: torch.Tensor, ref: torch.Tensor, data_range: float | torch.Tensor = 1.0) -> torch.Tensor:
    """2D SSIM exactly as fastMRI's evaluation computes it (scikit-image's `structural_similarity`
    defaults: 7x7 uniform window, sample covariance, K1 0.01, K2 0.03, mean over the valid region).

    `monai.metrics.SSIMMetric`'s uniform window uses the population covariance, hence this
    function. Differentiable.

    Args:
        pred, ref: (N, 1, H, W) images, H and W >= 7.
        data_range: scalar or (N,) data range.

    Returns:
        (N,) SSIM per image.
    """
    win, n = 7, 49
    kernel = torch.full((1, 1, win, win), 1.0 / n, dtype=pred.dtype, device=pred.device)
    dr = torch.as_tensor(data_range, dtype=pred.dtype, device=pred.device).reshape(-1, 1, 1, 1)
    c1, c2 = (0.01 * dr) ** 2, (0.03 * dr) ** 2
    ux, uy = F.conv2d(pred, kernel), F.conv2d(ref, kernel)
    cov_norm = n / (n - 1)
    vx = cov_norm * (F.conv2d(pred * pred, kernel) - ux * ux)
    vy = cov_norm * (F.conv2d(ref * ref, kernel) - uy * uy)
    vxy = cov_norm * (F.conv2d(pred * ref, kernel) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1)


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    g[g < torch.finfo(torch.float64).eps * g.max()] = 0
    return (g / g.sum()).to(dtype=dtype, device=device)[None, None]


def vif_terms(pred: torch.Tensor, ref: torch.Tensor, noise_var: float = VIF_NOISE_VAR) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator and denominator of pixel-domain VIF (Sheikh & Bovik 2006, VIFp, 4 scales).

    VIF = num / den; written from the published algorithm (the same steps as the `sewar` package's
    `vifp`, which the tests use as the reference). Differentiable almost everywhere.

    Args:
        pred, ref: (N, 1, H, W) images on a [0, 255] scale.
        noise_var: the visual noise variance sigma_n^2.

    Returns:
        num, den: (N,) information sums per image.
    """
    eps = 1e-10
    num = torch.zeros(pred.shape[0], dtype=torch.float64, device=pred.device)
    den = torch.zeros_like(num)
    ref, pred = ref.double(), pred.double()
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        win = _gaussian_window(n, n / 5.0, ref.dtype, ref.device)
        if scale > 1:
            ref = F.conv2d(ref, win)[..., ::2, ::2]
            pred = F.conv2d(pred, win)[..., ::2, ::2]
        if min(ref.shape[-2:]) < n:
            break
        mu1, mu2 = F.conv2d(ref, win), F.conv2d(pred, win)
        s1 = (F.conv2d(ref * ref, win) - mu1 * mu1).clamp_min(0)
        s2 = (F.conv2d(pred * pred, win) - mu2 * mu2).clamp_min(0)
        s12 = F.conv2d(ref * pred, win) - mu1 * mu2
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        flat1, flat2 = s1 < eps, s2 < eps
        g = torch.where(flat1, torch.zeros_like(g), g)
        sv = torch.where(flat1, s2, sv)
        s1 = torch.where(flat1, torch.zeros_like(s1), s1)
        g = torch.where(flat2, torch.zeros_like(g), g)
        sv = torch.where(flat2, torch.zeros_like(sv), sv)
        neg = g < 0
        sv = torch.where(neg, s2, sv)
        g = torch.where(neg, torch.zeros_like(g), g)
        sv = sv.clamp_min(eps)
        num = num + torch.log10(1.0 + g**2 * s1 / (sv + noise_var)).flatten(1).sum(1)
        den = den + torch.log10(1.0 + s1 / noise_var).flatten(1).sum(1)
    return num, den


def vif(pred: torch.Tensor, ref: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """VIFp of (N, 1, H, W) images, scaled so that `data_range` maps to 255. Returns (N,)."""
    num, den = vif_terms(pred * (255.0 / data_range), ref * (255.0 / data_range))
    return num / den


class VolumeAccumulator:
    """Sums per volume from which SSIM, PSNR, NMSE and MSE follow.

    Args:
        win_size, kernel_type: SSIM window (MONAI's default 11 Gaussian, sigma 1.5; fastMRI's
            evaluation uses a 7x7 "uniform" window).
        clip: optional (low, high): prediction and reference are clipped to it first (CT: the HU
            window, so values outside the displayed range do not count).
    """

    def __init__(
        self,
        win_size: int = 11,
        kernel_type: str = "gaussian",
        metrics: Sequence[str] = METRICS,
        clip: Sequence[float] | None = None,
    ) -> None:
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        self.ssim = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=win_size, kernel_type=kernel_type)
        self.win_size = win_size
        unknown = set(metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown metric {sorted(unknown)[0]!r}: expected one of {', '.join(METRICS)}")
        self.metrics = set(metrics)
        self.volumes: dict[str, dict[str, float]] = {}

    def add(self, pred: torch.Tensor, ref: torch.Tensor, volume: str, volume_max: float) -> None:
        """Add one or more slices of `volume`: pred and ref are (N, 1, H, W) or (1, H, W)."""
        pred = convert_to_tensor(pred, track_meta=False).detach().float()
        ref = convert_to_tensor(ref, track_meta=False).detach().float()
        if pred.shape != ref.shape:
            raise ValueError(f"{volume}: prediction {tuple(pred.shape)} and reference {tuple(ref.shape)} differ")
        if pred.ndim == 3:
            pred, ref = pred[None], ref[None]
        if min(pred.shape[-2:]) < max(self.win_size, 7):
            raise ValueError(f"{volume}: slices of {tuple(pred.shape[-2:])} are smaller than the SSIM window {self.win_size}")
        if not math.isfinite(volume_max) or volume_max <= 0:
            raise ValueError(f"{volume}: the reference volume maximum is {volume_max}; metrics are undefined")
        if self.clip is not None:
            pred, ref = pred.clamp(*self.clip), ref.clamp(*self.clip)
        p, r = pred / volume_max, ref.to(pred.device) / volume_max
        acc = self.volumes.setdefault(volume, {"ssim_sum": 0.0, "ssim_fastmri_sum": 0.0, "slices": 0, "sse": 0.0,
                                               "voxels": 0, "ref2": 0.0, "vif_num": 0.0, "vif_den": 0.0})
        if "ssim" in self.metrics:
            acc["ssim_sum"] += float(torch.as_tensor(self.ssim(p, r)).sum())
        if "ssim_fastmri" in self.metrics:
            acc["ssim_fastmri_sum"] += float(ssim_fastmri(p, r, 1.0).sum())
        if "vif" in self.metrics:
            num, den = vif_terms(p * 255.0, r * 255.0)
            acc["vif_num"] += float(num.sum())
            acc["vif_den"] += float(den.sum())
        acc["slices"] += p.shape[0]
        acc["sse"] += float(((p - r) ** 2).sum(dtype=torch.float64))
        acc["voxels"] += p.numel()
        acc["ref2"] += float((r**2).sum(dtype=torch.float64))

    def per_volume(self) -> dict[str, dict[str, float]]:
        """{volume: {"ssim", "ssim_fastmri", "psnr", "nmse", "mse", "vif"}}; the MSE on the [0, 1] scale of
        the volume maximum. A reference of all zeros (PSNR, NMSE undefined) or without any structure
        (VIF undefined) raises a ValueError naming the volume."""
        out = {}
        for name, a in self.volumes.items():
            if a["ref2"] == 0:
                raise ValueError(f"{name}: the reference is all zeros; PSNR and NMSE are undefined")
            if "vif" in self.metrics and a["vif_den"] <= 0:
                raise ValueError(f"{name}: the reference has no structure (constant); VIF is undefined")
            mse = a["sse"] / a["voxels"]
            values = {
                "ssim": a["ssim_sum"] / a["slices"],
                "psnr": 10 * math.log10(1.0 / mse) if mse > 0 else math.inf,
                "nmse": a["sse"] / a["ref2"],
                "mse": mse,
                "ssim_fastmri": a["ssim_fastmri_sum"] / a["slices"],
                "vif": a["vif_num"] / a["vif_den"] if a["vif_den"] > 0 else math.nan,
            }
            out[name] = {k: v for k, v in values.items() if k in self.metrics}
        return out


def _per_sample(batch, output, pred_key: str, label_key: str):
    """(pred, label, filename, volume_max) per sample from a decollated or batched engine state.
    A (C, H, W) network input with guide channels (the MR-guided PET network's "image": OSEM, then
    the MR) is scored on its first channel, the image itself."""
    if isinstance(output, dict):  # not decollated: batched tensors and lists
        # a key the engine output lacks is read from the batch (the multi-coil network's input is
        # k-space, so its zero-filled image is in the batch only)
        preds = output[pred_key] if pred_key in output else batch[pred_key]
        for i in range(len(preds)):
            yield _first_channel(preds[i]), output[label_key][i], batch["filename"][i], float(batch["volume_max"][i])
    else:
        for b, o in zip(batch, output):
            yield _first_channel(o[pred_key]), o[label_key], b["filename"], float(b["volume_max"])


def _first_channel(x):
    return x[:1] if getattr(x, "ndim", 0) == 3 and x.shape[0] > 1 else x


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
        clip: optional (low, high) range both images are clipped to (CT: the [0, 1] HU window).
    """

    def __init__(
        self,
        metric: str = "ssim",
        pred_key: str = "pred",
        label_key: str = "label",
        win_size: int = 11,
        kernel_type: str = "gaussian",
        clip: Sequence[float] | None = None,
    ) -> None:
        self.clip = clip
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")
        self.metric, self.pred_key, self.label_key = metric, pred_key, label_key
        self.win_size, self.kernel_type = win_size, kernel_type
        super().__init__(output_transform=lambda x: x)

    def reset(self) -> None:
        self.acc = VolumeAccumulator(self.win_size, self.kernel_type, metrics=(self.metric,), clip=self.clip)

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
        details = getattr(engine.state, "metric_details", None)  # MONAI's engines add this field
        if details is None:
            details = {}
            setattr(engine.state, "metric_details", details)  # noqa: B010 (an attribute ignite's State does not declare)
        details[name] = self.values()


def reconstruction_metrics(metrics: Sequence[str], baseline: str, clip: Sequence[float] | None = None,
                           baseline_key: str = "image", more_baselines: dict[str, str] | None = None) -> dict:
    """The evaluator's additional metrics: `val_<m>` of the network's output ("pred") for each of
    `metrics`, and `<baseline>_<m>` of its input (the classical baseline: "zf" zero-filled, "fbp",
    "noisy") for SSIM and each of `metrics`; both images clipped to `clip` when given. The baseline
    image is the engine output's (or batch's) `baseline_key`: "image", the network's input, or
    "zero_filled" for the multi-coil network, whose input is k-space. `more_baselines`: {prefix:
    key} of further baselines scored the same way (PET's evaluation: the tuned post-filtered OSEM
    beside the network's unfiltered OSEM input)."""
    out = {f"val_{m}": VolumeReconMetric(m, pred_key="pred", clip=clip) for m in metrics}
    for prefix, key in {baseline: baseline_key, **(more_baselines or {})}.items():
        for m in ("ssim", *metrics):
            out[f"{prefix}_{m}"] = VolumeReconMetric(m, pred_key=key, clip=clip)
    return out
