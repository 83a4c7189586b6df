"""What a post-reconstruction network can gain over post-filtered OSEM in PET, bounded by physics.

On the validation subject's FDG phantom (never the test subjects), at each count level: the best
post-filtered OSEM (iterations x filter, PSNR in the head, the measure of scripts/compare.py --pet),
OSEM on the NOISE-FREE expected counts (what a perfect denoiser of OSEM could reach, at each
iteration number), and the truth blurred by the scanner's PSF. The gap between the first two is
the room that removing noise alone leaves; beyond it the network must undo the scanner's blur.

    python scripts/studies/pet_ceiling.py [--slices-every 3]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bundle.data.demo import DEMO_DIR, DEMO_SPLIT  # noqa: E402
from bundle.physics.pet import gaussian_blur, osem, post_filter  # noqa: E402
from bundle.reporting.pet import FILTERS_MM, image_metrics, load_case  # noqa: E402
from bundle.transforms.pet import PETAcquisition  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices-every", type=int, default=3, help="every n-th slice of the volume")
    ap.add_argument("--fractions", default="0.25,0.1,0.05")
    args = ap.parse_args()
    case = load_case(os.path.join(str(DEMO_DIR), "ixi_t1_2mm", f"{DEMO_SPLIT['validation'][0]}-T1_ds.nii.gz"), seed=100)
    idx = list(range(0, case["activity"].shape[0], args.slices_every))
    sub = {k: (v[idx] if torch.is_tensor(v) else v) for k, v in case.items()}
    acq = PETAcquisition()
    print(f"{case['name']}, {len(idx)} slices; PSNR (dB) in the head, data range the truth's maximum")
    print(f"truth blurred by the {acq.psf_fwhm_mm:g} mm PSF: {image_metrics(gaussian_blur(sub['activity'], acq.psf_fwhm_mm, 2.0), sub, False)['psnr']:.2f}")
    for f in (float(v) for v in args.fractions.split(",")):
        gens = [torch.Generator().manual_seed(i) for i in idx]
        op, counts, bg = acq.simulate(sub["activity"], sub["mu"], 2.0, [f] * len(idx), gens)
        expected = op.A(sub["activity"]) + bg
        noisy: dict = {}
        clean: dict = {}
        clean_images: dict = {}

        def keep(store):
            def cb(it, x):
                if store is clean and it == 40:
                    clean_images[it] = x.clone()
                for flt in FILTERS_MM:
                    store[(it, flt)] = image_metrics(post_filter(x, flt, 2.0), sub, False)["psnr"]
            return cb

        with torch.no_grad():
            osem(op, counts, bg, 20, acq.subsets, callback=keep(noisy))
            osem(op, expected, bg, 40, acq.subsets, callback=keep(clean))
        best = max(noisy, key=noisy.get)
        bias = image_metrics(clean_images[40], sub, False)
        print(f"  noise-free OSEM 40 it: grey matter bias {100 * bias['gm_bias']:+.1f} %, white {100 * bias['wm_bias']:+.1f} %")
        print(f"{100 * f:g} % counts: best post-filtered OSEM {noisy[best]:.2f} ({best[0]} it, {best[1]:g} mm); "
              f"noise-free OSEM, no filter: " + ", ".join(f"{it} it {clean[(it, 0.0)]:.2f}" for it in (3, 6, 10, 20, 40)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
