"""Report figures: reference | methods, with error maps on one shared colour scale, and the mask."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from bundle.data.io import atomic_output


def save_figure(fig, path: str, dpi: int = 110) -> None:
    """Save a matplotlib figure as PNG atomically (temporary file, then rename) and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_output(path, ".png") as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)


def comparison_panel(
    images: Mapping[str, torch.Tensor],
    methods: Sequence[str],
    path: str,
    title: str = "",
    metrics: Mapping[str, str] | None = None,
) -> None:
    """Write a PNG: row 1 the reference and each method, row 2 the sampling mask and each method's
    absolute error, all error maps on one colour scale (0 to the 99.5th percentile of all errors).

    Args:
        images: {"reference": (H, W), "mask": (W,), method: (H, W)}.
        methods: the methods to show, in order.
        path: PNG to write (atomically).
        metrics: optional text per method shown under its name (e.g. "SSIM 0.81").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = images["reference"].numpy()
    # slices are (R, A) in RAS: rotate so anterior is up, as radiologists read axial images
    show = lambda a: np.rot90(a)  # noqa: E731
    vmax = float(np.percentile(ref, 99.5)) or 1.0
    errors = {m: np.abs(images[m].numpy() - ref) for m in methods}
    emax = float(np.percentile(np.concatenate([e.ravel() for e in errors.values()]), 99.5)) or 1.0
    cols = len(methods) + 1
    fig, axes = plt.subplots(2, cols, figsize=(2.6 * cols, 5.6), squeeze=False)
    axes[0, 0].imshow(show(ref), cmap="gray", vmin=0, vmax=vmax)
    axes[0, 0].set_title("reference", fontsize=9)
    mask = np.tile(images["mask"].numpy()[None, :], (ref.shape[0], 1))
    axes[1, 0].imshow(show(mask), cmap="gray", vmin=0, vmax=1)
    axes[1, 0].set_title(f"mask ({int(images['mask'].sum())}/{mask.shape[1]} lines)", fontsize=9)
    im = None
    for j, m in enumerate(methods, start=1):
        label = m if not metrics or m not in metrics else f"{m}\n{metrics[m]}"
        axes[0, j].imshow(show(images[m].numpy()), cmap="gray", vmin=0, vmax=vmax)
        axes[0, j].set_title(label, fontsize=9)
        im = axes[1, j].imshow(show(errors[m]), cmap="inferno", vmin=0, vmax=emax)
        axes[1, j].set_title(f"|{m} - reference|", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if im is not None:
        fig.colorbar(im, ax=list(axes[1, 1:]), shrink=0.8, label="absolute error (shared scale)")
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=110)


def ct_window_panel(
    images: Mapping[str, np.ndarray],
    path: str,
    windows: Sequence[str] = ("soft_tissue", "lung", "bone"),
    title: str = "",
    metrics: Mapping[str, str] | None = None,
) -> None:
    """Write a PNG of CT slices in HU: one row per display window (level/width from
    `bundle.ct_transforms.DISPLAY_WINDOWS`: brain, soft_tissue, lung, bone, full), one column per
    image ("reference", then methods), and a last row of each method's error (HU, +-200).

    Args:
        images: {"reference": (H, W) HU, method: (H, W) HU, ...} in display order.
        path: PNG to write (atomically).
        windows: window names, one row each.
        metrics: optional text per method shown under its name.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bundle.transforms.ct import DISPLAY_WINDOWS

    unknown = [w for w in windows if w not in DISPLAY_WINDOWS]
    if unknown:
        raise ValueError(f"unknown display window {unknown[0]!r}: expected one of {', '.join(DISPLAY_WINDOWS)}")
    names = list(images)
    ref = np.asarray(images["reference"])
    show = lambda a: np.rot90(np.asarray(a))  # noqa: E731  (R, A) slices: anterior up
    rows = len(windows) + 1
    fig, axes = plt.subplots(rows, len(names), figsize=(2.8 * len(names), 2.8 * rows), squeeze=False)
    for i, w in enumerate(windows):
        level, width = DISPLAY_WINDOWS[w]
        for j, n in enumerate(names):
            axes[i, j].imshow(show(images[n]), cmap="gray", vmin=level - width / 2, vmax=level + width / 2)
            label = n if not metrics or n not in metrics else f"{n}  {metrics[n]}"
            axes[i, j].set_title(f"{label}\n{w} W{width:g} L{level:g}" if i == 0 else f"{w} W{width:g} L{level:g}",
                                 fontsize=8)
    im = None
    for j, n in enumerate(names):
        if n == "reference":
            axes[-1, j].set_visible(False)
            continue
        im = axes[-1, j].imshow(show(np.asarray(images[n]) - ref), cmap="RdBu_r", vmin=-200, vmax=200)
        axes[-1, j].set_title(f"{n} - reference (HU)", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if im is not None:
        fig.colorbar(im, ax=list(axes[-1]), shrink=0.8, label="error (HU)")
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=90)
