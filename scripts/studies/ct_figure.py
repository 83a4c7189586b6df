"""Figure of one CT slice in HU: reference, FBP of the simulated scan, the network, and the network
made consistent with the scan (`--dc-iterations`, 0 drops that panel), in several display windows
(soft tissue, lung, bone, brain), with error maps.

    python scripts/studies/ct_figure.py VOLUME.nii.gz -o docs/figures/ct_example.png --views 60 \
        --windows soft_tissue lung bone [--slice N] [--ckpt models/model_ct.pt]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from nibabel.orientations import apply_orientation, io_orientation  # noqa: E402

from bundle.transforms.ct import DISPLAY_WINDOWS, CTAcquisition, CTDataConsistency, hu_to_unit, unit_to_hu  # noqa: E402
from bundle.errors import InputError, format_error  # noqa: E402
from bundle.reporting.figures import ct_window_panel  # noqa: E402
from bundle.inference import ras_spacing  # noqa: E402
from bundle.data.io import load_nifti_volume  # noqa: E402
from bundle.metrics import VolumeAccumulator  # noqa: E402
from bundle.networks import ResidualUNet, load_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("volume")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--ckpt", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models", "model_ct.pt"))
    p.add_argument("--views", type=int, default=60)
    p.add_argument("--full-views", type=int, default=720)
    p.add_argument("--incident-photons", type=float, default=None)
    p.add_argument("--electronic-noise", type=float, default=0.0)
    p.add_argument("--dc-weight", type=float, default=1e-3, help="as dc_weight in configs/train_ct.yaml")
    p.add_argument("--dc-iterations", type=int, default=12, help="as dc_iterations; 0: no data-consistency panel")
    p.add_argument("--slice", type=int, default=None, help="axial slice (RAS); default the middle one")
    p.add_argument("--windows", nargs="+", default=["soft_tissue", "lung", "bone"], choices=list(DISPLAY_WINDOWS))
    p.add_argument("--features", type=int, nargs=6, default=[16, 16, 32, 64, 128, 16])
    args = p.parse_args(argv)
    try:
        img, data = load_nifti_volume(args.volume)
        to_ras = io_orientation(img.affine)
        vol = apply_orientation(data, to_ras)
        sp = ras_spacing(img, to_ras)
        z = vol.shape[2] // 2 if args.slice is None else args.slice
        if not 0 <= z < vol.shape[2]:
            raise InputError(f"{args.volume}: slice {z} outside 0..{vol.shape[2] - 1}")
        unit = hu_to_unit(torch.from_numpy(np.ascontiguousarray(vol[:, :, z])).float())[None]
        acq = CTAcquisition(views=args.views, full_views=args.full_views, incident_photons=args.incident_photons,
                            electronic_noise=args.electronic_noise)
        dc = CTDataConsistency(acq, args.dc_weight, args.dc_iterations)
        sinogram, geom = acq.sinogram(unit, sp[:2], torch.Generator().manual_seed(0))
        fbp = acq.reconstruct(sinogram, geom)
        net = load_checkpoint(ResidualUNet(features=args.features, norm=None, data_consistency=False), args.ckpt).eval()
        with torch.no_grad():
            pred = net(fbp[None])[0]
        images = {"reference": unit, "FBP": fbp, "network": pred}
        if args.dc_iterations > 0:
            images["network + DC"] = dc(pred, sinogram, sp[:2])
    except InputError as e:
        print(f"error: {format_error(e)}", file=sys.stderr)
        return 1
    metrics = {}
    for name in list(images)[1:]:
        acc = VolumeAccumulator(metrics=("ssim", "psnr"), clip=(0.0, 1.0))
        acc.add(images[name][None], unit[None], "slice", 1.0)
        m = acc.per_volume()["slice"]
        metrics[name] = f"SSIM {m['ssim']:.3f} PSNR {m['psnr']:.1f}"
    hu = {k: unit_to_hu(v.clamp(0, 1))[0].numpy() for k, v in images.items()}
    dose = "noise-free" if args.incident_photons is None else f"I0 {args.incident_photons:g}"
    title = f"{os.path.basename(args.volume)} slice {z}: {args.views}/{args.full_views} views, {dose}"
    ct_window_panel(hu, args.output, args.windows, title, metrics)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
