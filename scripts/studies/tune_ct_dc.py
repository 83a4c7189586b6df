"""The run behind the CT data-consistency setting (`dc_weight`, `dc_iterations` in
configs/train_ct.yaml): on the VALIDATION CT (never the test CTs), simulate the scan, run the
shipped network, then make its output consistent with the scan for a grid of weights and
conjugate-gradient iterations, and print SSIM / PSNR per setting beside FBP and the network alone.

    python scripts/studies/tune_ct_dc.py [--volume bundle/demo_data/ct/totalseg_ct_cropped.nii.gz] [--views 60]
        [--incident-photons 1e4 --electronic-noise 5 --model models/model_ct_lowdose.pt]

Measured on the 2-core CPU machine (every 4th of the 164 foreground slices, 60 views, noise-free,
models/model_ct.pt): FBP 33.31 dB / SSIM 0.871, network 32.98 / 0.891; weight 1e-3: 34.49 dB at 4
iterations, 35.43 at 8, 35.67 at 12, 35.80 at 16, 35.91 at 32; weights 1e-2 / 3e-2 / 1e-1 reach
only 35.00 / 34.23 / 33.56 at 16; 0 (no regularisation) 35.73 at 12. Hence 1e-3 and 12 (most of
the gain at a third of 32's cost). 20 minutes for that grid (the 2 cores shared with a test run);
27 s alone with release 0.6.2, whose data consistency runs on a sparse system matrix: the same values.
Low dose (models/model_ct_lowdose.pt, --incident-photons 10000 --electronic-noise 5, 12 iterations):
FBP 27.57 / 0.585, network 26.97 / 0.728; weights 0.3 / 0.1 / 0.03 / 0.01 / 0.003 / 0.001: 27.62,
28.38, 29.76, 30.58, 29.96, 29.28 dB (SSIM 0.746, 0.767, 0.788, 0.762, 0.701, 0.666): 1e-2 for the
low-dose evaluation (on the test CTs it did not help; see the model card).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from nibabel.orientations import apply_orientation, io_orientation  # noqa: E402

from bundle.transforms.ct import CTAcquisition, CTDataConsistency, hu_to_unit  # noqa: E402
from bundle.data import foreground_fraction  # noqa: E402
from bundle.errors import InputError, format_error  # noqa: E402
from bundle.inference import ras_spacing  # noqa: E402
from bundle.data.io import load_nifti_volume  # noqa: E402
from bundle.metrics import VolumeAccumulator  # noqa: E402
from bundle.networks import ResidualUNet, load_checkpoint  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
VALIDATION = os.path.join(ROOT, "bundle", "demo_data", "ct", "totalseg_ct_cropped.nii.gz")


def score(pred: torch.Tensor, ref: torch.Tensor) -> str:
    acc = VolumeAccumulator(metrics=("ssim", "psnr"), clip=(0.0, 1.0))
    acc.add(pred[:, None], ref[:, None], "v", 1.0)
    m = acc.per_volume()["v"]
    return f"{m['psnr']:6.2f} dB / {m['ssim']:.4f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volume", default=VALIDATION, help="a CT volume in HU (NIfTI) of the validation split")
    p.add_argument("--model", default=os.path.join(ROOT, "models", "model_ct.pt"))
    p.add_argument("--views", type=int, default=60)
    p.add_argument("--incident-photons", type=float, default=None)
    p.add_argument("--electronic-noise", type=float, default=0.0)
    p.add_argument("--step", type=int, default=4, help="every step-th foreground slice")
    p.add_argument("--weights", default="0.1,0.03,0.01,0.003,0.001,0")
    p.add_argument("--iterations", default="4,8,12,16,32")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    try:  # one-line errors for a missing or unreadable model or volume
        net = load_checkpoint(ResidualUNet(norm=None, data_consistency=False), args.model).eval()
        acq = CTAcquisition(views=args.views, incident_photons=args.incident_photons,
                            electronic_noise=args.electronic_noise)
        img, data = load_nifti_volume(args.volume)
    except InputError as e:
        print(f"error: {format_error(e)}", file=sys.stderr)
        return 1
    to_ras = io_orientation(img.affine)
    hu = torch.from_numpy(np.ascontiguousarray(np.moveaxis(apply_orientation(data, to_ras), 2, 0)))
    unit = hu_to_unit(hu, acq.window)
    unit = torch.stack([s for s in unit if foreground_fraction(s, 0.1 * float(unit.max())) >= 0.1])[:: args.step]
    spacing = ras_spacing(img, to_ras)[:2]
    sinogram, geom = acq.sinogram(unit, spacing, torch.Generator().manual_seed(0))
    fbp = acq.reconstruct(sinogram, geom)
    pred = net(fbp[:, None])[:, 0]
    print(f"{os.path.basename(args.volume)}: {unit.shape[0]} slices, {acq.describe()}")
    print(f"FBP      {score(fbp, unit)}\nnetwork  {score(pred, unit)}")
    for w in (float(v) for v in args.weights.split(",")):
        cells = []
        for n in (int(v) for v in args.iterations.split(",")):
            cells.append(f"{n} it {score(CTDataConsistency(acq, w, n)(pred, sinogram, spacing), unit)}")
        print(f"weight {w:g}: " + " | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
