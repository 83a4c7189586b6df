"""Reconstruct the real, prospectively undersampled 8-coil brain k-space of ../shared/data/kspace.

    python scripts/studies/kspace_demo.py                     # -> eval/kspace/, docs/figures/kspace_sigpy_brain.png

The SigPy tutorial's acquisition as BART stored it (8 coils, 180 x 230, about 12.5 % of k-space
sampled on a 2D variable-density pattern; the k-space of BART's PICS image, in its axes) is written
as a fastMRI-format HDF5 file with its mask, then reconstructed
by the bundle's inference path twice: the single-coil emulation (`MRIReconstructor`, models/model.pt,
on the zero-filled RSS image) and the multi-coil network (`MultiCoilReconstructor`,
models/model_multicoil.pt, on the coil k-space; alone and as shipped, averaged with PICS), beside SigPy's L1-wavelet PICS with ESPIRiT maps
and BART's PICS reconstruction of the same data, the pseudo-reference. There is no fully sampled
reference: the figure, and each image's SSIM against BART's PICS (after a least-squares scaling,
since the methods' intensity scales differ), are the result.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bundle.data.fastmri import write_fastmri  # noqa: E402
from bundle.data.rawkspace import read_cfl  # noqa: E402

SHARED_KSPACE = os.path.join(ROOT, "..", "shared", "data", "kspace")


def convert(cfl: str, out: str) -> str:
    """BART's k-space (the data BART's PICS reconstructed) as a one-slice multi-coil fastMRI file
    with its 2D sampling mask, in BART's axes (PHS1, PHS2) = (180, 230), as its PICS image."""
    from bundle.data.rawkspace import read_raw

    raw = read_raw(cfl)
    if raw.mask is None:
        raise SystemExit(f"error: {cfl}: expected prospectively undersampled k-space")
    return write_fastmri(out, raw.kspace, mask=raw.mask, acquisition="sigpy brain, 8 coils, prospective")


def scaled_ssim(image: np.ndarray, reference: np.ndarray) -> float:
    """scikit-image SSIM against a pseudo-reference of another scale: the image is first scaled by
    the least-squares factor <x, r> / <x, x>; data range = the reference maximum."""
    from skimage.metrics import structural_similarity

    x = image.astype(np.float64)
    a = float((x * reference).sum() / max((x * x).sum(), 1e-30))
    return float(structural_similarity(reference, a * x, data_range=float(reference.max())))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kspace", default=os.path.join(SHARED_KSPACE, "bart_pics_brain_ksp.cfl"),
                   help="the k-space BART's PICS image was reconstructed from")
    p.add_argument("--bart", default=os.path.join(SHARED_KSPACE, "bart_pics_brain_img"), help="BART PICS image (cfl stem)")
    p.add_argument("--ckpt", default=os.path.join(ROOT, "models", "model.pt"))
    p.add_argument("--multicoil-ckpt", default=os.path.join(ROOT, "models", "model_multicoil.pt"))
    p.add_argument("--pics-weight", type=float, default=0.03,
                   help="SigPy PICS weight (default: the one compare.py --multicoil tuned on the real phantoms at 8x)")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "eval", "kspace"))
    p.add_argument("--figure", default=os.path.join(ROOT, "docs", "figures", "kspace_sigpy_brain.png"))
    args = p.parse_args(argv)
    if not os.path.isfile(args.kspace):
        print(f"error: {args.kspace}: not found (the real k-space lives in ../shared/data/kspace)", file=sys.stderr)
        return 1

    import time

    import nibabel as nib
    import torch

    from bundle.data.rawkspace import read_raw
    from bundle.inference import InferenceRunner, MRIReconstructor, MultiCoilReconstructor
    from bundle.networks import ResidualUNet, load_checkpoint
    from bundle.parallel_imaging import classical, effective_acceleration, espirit_maps, pics_blend_for
    from bundle.reporting.figures import save_figure
    from bundle.varnet import VarNet, varnet_variant

    os.makedirs(args.out_dir, exist_ok=True)
    h5 = convert(args.kspace, os.path.join(args.out_dir, "sigpy_brain_8coil.h5"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    single = MRIReconstructor(load_checkpoint(ResidualUNet(), args.ckpt), device=device)
    InferenceRunner(single).run([h5], args.out_dir)  # no multi-coil model: the single-coil emulation
    multi_dir = os.path.join(args.out_dir, "multicoil")
    varnet = load_checkpoint(VarNet(**varnet_variant("cpu")), args.multicoil_ckpt)
    t = time.perf_counter()
    InferenceRunner(single, multicoil=MultiCoilReconstructor(varnet, device=device)).run([h5], multi_dir)
    seconds = {"varnet": time.perf_counter() - t}
    hybrid_dir = os.path.join(args.out_dir, "hybrid")  # what configs/inference.yaml ships
    t = time.perf_counter()
    InferenceRunner(single, multicoil=MultiCoilReconstructor(varnet, device=device, pics_blend="auto")).run([h5], hybrid_dir)
    seconds["hybrid"] = time.perf_counter() - t

    def load(folder: str, kind: str) -> np.ndarray:
        return nib.load(os.path.join(folder, f"sigpy_brain_8coil_{kind}.nii.gz")).get_fdata()[:, :, 0]

    zf, single_recon, multi_recon = load(args.out_dir, "zero_filled"), load(args.out_dir, "recon"), load(multi_dir, "recon")
    hybrid = load(hybrid_dir, "recon")
    raw = read_raw(h5)
    t = time.perf_counter()
    ours_pics = classical("pics", raw.kspace[0], raw.mask, espirit_maps(raw.kspace[0], raw.mask, crop=0.0), args.pics_weight)
    seconds["pics"] = time.perf_counter() - t
    panels = [("zero-filled RSS (12.5 % sampled)", zf), ("single-coil network (model.pt)", single_recon),
              ("multi-coil network (model_multicoil.pt)", multi_recon),
              (f"shipped: {1 - pics_blend_for(raw.mask):g} network + {pics_blend_for(raw.mask):g} PICS on the object "
               f"({effective_acceleration(raw.mask):.0f}x effective)", hybrid), (f"SigPy PICS, ESPIRiT, weight {args.pics_weight:g}", ours_pics)]
    lines = []
    if os.path.exists(args.bart + ".cfl"):
        bart = read_cfl(args.bart)
        pics = np.sqrt((np.abs(bart) ** 2).sum(axis=tuple(range(3, bart.ndim))))[0]  # maps combined; (180, 230)
        for title, img in panels:
            score = scaled_ssim(img, pics)
            lines.append(f"| {title} | {score:.4f} |")
        panels = [(f"{t}\nSSIM vs BART PICS {scaled_ssim(img, pics):.3f}", img) for t, img in panels]
        panels.append(("BART PICS (pseudo-reference)", pics))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.6))
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=np.percentile(img, 99.5))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle("Real 8-coil brain k-space, prospectively undersampled (2D variable density): no fully sampled reference")
    fig.tight_layout()
    save_figure(fig, args.figure)
    if lines:
        print("| method | SSIM against BART's PICS (scaled by least squares) |\n|---|---|\n" + "\n".join(lines))
    print(f"seconds for the slice (this machine): multi-coil network {seconds['varnet']:.2f}, "
          f"network + PICS (shipped) {seconds['hybrid']:.2f}, SigPy PICS {seconds['pics']:.2f}")
    print(f"wrote {h5}, the reconstructions in {args.out_dir} and {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
