"""Reconstruct the real, prospectively undersampled 8-coil brain k-space of ../shared/data/kspace.

    python scripts/studies/kspace_demo.py                     # -> eval/kspace/, docs/figures/kspace_sigpy_brain.png

The SigPy tutorial's acquisition (8 coils, 230 x 180, about 12.5 % of k-space sampled on a 2D
variable-density pattern) is written as a fastMRI-format HDF5 file with its mask, then reconstructed
by the bundle's inference path (`MRIReconstructor` through `InferenceRunner`, shipped MRI weights): the zero-filled
root-sum-of-squares image and the network's output, beside BART's PICS (parallel imaging +
compressed sensing) reconstruction of the same data as a pseudo-reference. There is no fully sampled
reference, so no metric is computed: the figure is the result.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bundle.data.fastmri import write_fastmri  # noqa: E402

SHARED_KSPACE = os.path.join(ROOT, "..", "shared", "data", "kspace")


def read_cfl(stem: str) -> np.ndarray:
    """A BART .cfl/.hdr pair as a complex64 array (BART stores column-major)."""
    with open(stem + ".hdr") as f:
        lines = f.read().splitlines()
    dims = [int(v) for v in lines[lines.index("# Dimensions") + 1].split()]
    data = np.fromfile(stem + ".cfl", dtype=np.complex64)
    return data.reshape(dims, order="F")


def convert(npy: str, out: str) -> str:
    """The (coils, H, W) k-space as a one-slice multi-coil fastMRI file with its 2D sampling mask."""
    kspace = np.load(npy)
    if kspace.ndim != 3 or not np.iscomplexobj(kspace):
        raise SystemExit(f"error: {npy}: expected complex (coils, H, W) k-space, got {kspace.dtype} {kspace.shape}")
    mask = np.abs(kspace).sum(0) > 0
    return write_fastmri(out, kspace[None], mask=mask, acquisition="sigpy brain, 8 coils, prospective")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kspace", default=os.path.join(SHARED_KSPACE, "sigpy_cartesian_ksp.npy"))
    p.add_argument("--bart", default=os.path.join(SHARED_KSPACE, "bart_pics_brain_img"), help="BART PICS image (cfl stem)")
    p.add_argument("--ckpt", default=os.path.join(ROOT, "models", "model.pt"))
    p.add_argument("--out-dir", default=os.path.join(ROOT, "eval", "kspace"))
    p.add_argument("--figure", default=os.path.join(ROOT, "docs", "figures", "kspace_sigpy_brain.png"))
    args = p.parse_args(argv)
    if not os.path.isfile(args.kspace):
        print(f"error: {args.kspace}: not found (the real k-space lives in ../shared/data/kspace)", file=sys.stderr)
        return 1

    import nibabel as nib
    import torch

    from bundle.reporting.figures import save_figure
    from bundle.inference import InferenceRunner, MRIReconstructor
    from bundle.networks import ResidualUNet, load_checkpoint

    os.makedirs(args.out_dir, exist_ok=True)
    h5 = convert(args.kspace, os.path.join(args.out_dir, "sigpy_brain_8coil.h5"))
    net = load_checkpoint(ResidualUNet(), args.ckpt)
    rec = MRIReconstructor(net, device="cuda" if torch.cuda.is_available() else "cpu")
    InferenceRunner(rec).run([h5], args.out_dir)
    zf = nib.load(os.path.join(args.out_dir, "sigpy_brain_8coil_zero_filled.nii.gz")).get_fdata()[:, :, 0]
    recon = nib.load(os.path.join(args.out_dir, "sigpy_brain_8coil_recon.nii.gz")).get_fdata()[:, :, 0]
    panels = [("zero-filled RSS (12.5 % sampled)", zf), ("network (shipped MRI weights)", recon)]
    if os.path.exists(args.bart + ".cfl"):
        bart = read_cfl(args.bart)
        pics = np.sqrt((np.abs(bart) ** 2).sum(axis=tuple(range(3, bart.ndim))))[0].T  # maps combined; (H, W)
        panels.append(("BART PICS (pseudo-reference)", pics))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.6))
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=np.percentile(img, 99.5))
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle("Real 8-coil brain k-space, prospectively undersampled (2D variable density): no fully sampled reference")
    fig.tight_layout()
    save_figure(fig, args.figure)
    print(f"wrote {h5}, the reconstructions in {args.out_dir} and {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
