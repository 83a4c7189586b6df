"""How much does the demo T1 tell the Bowsher prior? The numbers behind `MAP_MR_FWHM_MM` and
`MAP_NEIGHBOURS` in `bundle/reporting/pet.py` (the classical MR-guided baseline of compare --pet).

On the validation subject (IXI048; the test subjects are not touched):
1. the truth's Bowsher penalty R(truth) under weights from the T1 (raw, or smoothed by 2 / 4 / 6 mm),
   as a fraction of R(truth) under weights from uniform noise (seeded), on the slice with the most
   activity: 1 means the T1 tells the prior nothing about the phantom's tissue edges;
2. MAP-EM (beta_rel 0.01, 10 iterations from OSEM 3 iterations, 8 subsets) on the 16 central
   slices at 10 % counts with each T1, against the best post-filtered OSEM of 3 / 5 / 7 / 10
   iterations x 4 / 6 mm (PSNR in the head).

    python scripts/studies/pet_bowsher_t1.py     # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bundle.errors import install_excepthook  # noqa: E402


def main() -> int:
    import torch

    from bundle.data.demo import DEMO_DIR, DEMO_SPLIT
    from bundle.physics.pet import post_filter
    from bundle.physics.pet_prior import bowsher_weights, map_em, penalty
    from bundle.reporting.pet import image_metrics, load_case, pet_reconstructor
    from bundle.transforms.base import slice_seed

    path = os.path.join(str(DEMO_DIR), "ixi_t1_2mm", f"{DEMO_SPLIT['validation'][0]}-T1_ds.nii.gz")
    case = load_case(path, seed=100, anatomy=True)
    smoothing = (0.0, 2.0, 4.0, 6.0)

    z = int(case["activity"].sum((1, 2)).argmax())
    truth, mr = case["activity"][z][None], case["mr"][z][None]
    noise = torch.rand(mr.shape, generator=torch.Generator().manual_seed(0))
    print(f"{case['name']}, slice {z}: R(truth) with the T1's weights / with random weights (3 of 8 neighbours)")
    for fwhm in smoothing:
        ratio = penalty(truth, bowsher_weights(post_filter(mr, fwhm, 2.0), 3)) / penalty(truth, bowsher_weights(noise, 3))
        print(f"  T1 smoothed {fwhm:g} mm: {float(ratio):.2f}")

    rec = pet_reconstructor(ROOT, os.path.join(ROOT, "models", "model_pet.pt"))
    acq = rec.acquisition
    idx = list(range(z - 8, z + 8))
    small = {k: (v[idx] if isinstance(v, torch.Tensor) and v.dim() == 3 else v) for k, v in case.items()}
    gens = [torch.Generator().manual_seed(slice_seed(case["name"], s, 0.1, 0)) for s in idx]
    op, counts, bg = acq.simulate(small["activity"], small["mu"], 2.0, [0.1] * len(idx), gens)
    with torch.no_grad():
        osem_best = max(image_metrics(acq.reconstruct(op, counts, bg, iterations=it, filter_mm=flt), small, False)["psnr"]
                        for it in (3, 5, 7, 10) for flt in (4.0, 6.0))
        start = acq.reconstruct(op, counts, bg, iterations=3, filter_mm=0.0)
        print(f"16 slices at 10 %: best post-filtered OSEM {osem_best:.2f} dB; MAP-EM (beta_rel 0.01, 10 it):")
        for fwhm in smoothing:
            w = bowsher_weights(post_filter(small["mr"], fwhm, 2.0), 3)
            x = map_em(op, counts, bg, w, 0.01, iterations=10, subsets=acq.subsets, start=start)
            print(f"  T1 smoothed {fwhm:g} mm: {image_metrics(x, small, False)['psnr']:.2f} dB", flush=True)
    return 0


if __name__ == "__main__":
    install_excepthook()
    raise SystemExit(main())
