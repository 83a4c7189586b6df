"""Network-regularised PICS against the shipped average, on VALIDATION only.

The shipped multi-coil reconstruction (0.15) averages the network's image with SigPy's
L1-wavelet PICS on the object (PICS's share 0.4 up to an effective 5.66x, 0.2 above). An average
is not data-consistent, and each image fills the unacquired k-space on its own. The candidate
solves one problem with both priors (as MoDL's data-consistency step or a "deep prior" CS):

    x = argmin 1/2 ||M F S x - y||^2 + lam ||W x||_1 + mu/2 ||x - x_net||^2

S the same ESPIRiT maps, W SigPy's Daubechies-4 wavelets, lam the shipped `pics_weight_for(mask)`,
x_net the network's complex image (its final coil k-space combined with the maps), started from
x_net, 100 iterations of SigPy's accelerated proximal gradient (`sigpy.app.LinearLeastSquares`
with `z`; `bundle.parallel_imaging.network_pics` since it shipped), data divided by `scale_of`
as PICS's. Where the object is (`object_support` of the
network's image), |x|; elsewhere the network alone (the RSS noise floor, as the shipped average).
mu in (0.01, 0.03, 0.1, 0.3, 1) (relative to ||A^H A|| <= 1).

Settings: the six of `multicoil_oversampled_blend.py` (real validation phantoms, the simulated
IXI048, the readout-oversampled IXI048 and pyradiomics brain1; 4x and 8x); baseline per setting
the better of zero-filled RSS and PICS at its best of 0.003, 0.01, 0.03 (tuned on the setting).

Rule, written 2026-12-07 before any candidate was scored: mu* = the mu with the best worst target
ratio over the six settings. It replaces the shipped average only if that worst ratio is at least
0.05 above the shipped average's (scored in the same run) and its mean SSIM over the six is not
lower. Otherwise nothing changes and the card says so.

Result (2-core CPU, 30 minutes): mu* = 0.03, worst ratio +0.20 against the shipped average's +0.22
(mean SSIM 0.7524 against 0.7485): it does not replace the shipped average. Every candidate is held
to about +0.22 by the simulated 8x setting (0.44 dB over zero-filled), which no mu moves; at 4x
mu 0.01 gains +0.89 dB on the real phantoms, +0.34 on the oversampled slices and +0.09 on the
simulated IXI048 (SSIM -0.002, +0.002, -0.004).

`--confirm` (a second rule, written 2026-12-07 after the table above and before any confirmation
score; the idea came from that table, so it is confirmed on data it never saw): the joint with
mu 0.01 up to an effective 5.66x (the shipped bands), the shipped average above (at 8x no mu beat
it: over the three 8x settings the average's worst ratio is +0.22, mu 0.03's +0.21, mu 0.1's
+0.22). Confirmation set: two volumes used by no multi-coil step, pyradiomics brain2 (a TCGA
patient) and pycortex's S1 (a raw 1 mm T1), 6 slices each, simulated coils seeded by file and
slice, each as acquired and with the readout oversampled twice, at 4x. The joint replaces the
shipped average up to 5.66x only if in BOTH settings its mean PSNR is at least 0.1 dB above the
average's, its mean SSIM not lower by more than 0.002 and its target ratio not lower.

    python scripts/studies/multicoil_network_pics.py models/model_multicoil.pt
    python scripts/studies/multicoil_network_pics.py models/model_multicoil.pt --confirm
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bundle.errors import install_excepthook  # noqa: E402

MUS = (0.01, 0.03, 0.1, 0.3, 1.0)
CONFIRM_SOURCES = ("mri/single/pyradiomics_brain2.nrrd", "mri/single/pycortex_s1_t1.nii.gz")
CONFIRM_MU = 0.01
BASELINE_WEIGHTS = (0.003, 0.01, 0.03)


def network_slice(net, cache, name: str, full: np.ndarray, acceleration: float) -> dict:
    """One fully sampled slice (C, H, W) of case `name` through the network at `acceleration`:
    {"mask", "acquired", "ref" (the RSS reference), "maps" (ESPIRiT, cached), "coils" (the network's
    final coil images, numpy), "network" (their RSS), "zf"}."""
    from bundle.physics.mri import ifft2c
    from bundle.physics.mri_sense import rss
    from bundle.reporting.multicoil import file_mask

    mask = file_mask(name, full.shape[-1], acceleration)
    acquired = (full * mask).astype(np.complex64)
    maps = cache("espirit", acquired, mask)
    with torch.no_grad():
        coils = net.coil_images(torch.from_numpy(acquired)[None], torch.from_numpy(mask).view(1, 1, 1, -1),
                                torch.from_numpy(maps)[None])[0][0]
    return {"mask": mask, "acquired": acquired, "ref": rss(ifft2c(torch.from_numpy(full)), 0).numpy(), "maps": maps,
            "coils": coils.numpy(), "network": rss(coils, 0).numpy(), "zf": rss(ifft2c(torch.from_numpy(acquired)), 0).numpy()}


def main(argv: list[str] | None = None) -> int:
    from multicoil_oversampled_blend import setting_means, target_ratio_table, validation_settings, volume_settings
    from multicoil_validation import validation_parser

    from bundle.networks import load_checkpoint
    from bundle.parallel_imaging import blend_with_pics, combine_with_pics, pics
    from bundle.reporting.multicoil import MapsCache, score
    from bundle.varnet import VarNet, varnet_variant

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", help="multi-coil weights (the cpu variant)")
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--confirm", action="store_true", help="the second rule: mu 0.01 at 4x on the confirmation set")
    args = ap.parse_args(argv)
    parser = validation_parser()
    mus, accelerations = MUS, (4.0, 8.0)
    if args.confirm:
        sets = volume_settings(parser, args.shared, CONFIRM_SOURCES)
        mus, accelerations = (CONFIRM_MU,), (4.0,)
    else:
        sets = validation_settings(parser, args.shared)
    net = load_checkpoint(VarNet(**varnet_variant("cpu")), args.ckpt).eval()
    cache = MapsCache()
    names = ["zf"] + [f"pics {w:g}" for w in BASELINE_WEIGHTS] + ["network alone", "shipped average"] + [f"mu {m:g}" for m in mus]
    candidates = ["network alone", "shipped average"] + [f"mu {m:g}" for m in mus]
    rows: dict = {}
    for acc in accelerations:
        for kind, cases in sets.items():
            per_case: dict = {}
            for case in cases:
                for full in case.slices:
                    one = network_slice(net, cache, case.name, full, acc)
                    mask, acquired, ref, maps, net_image = one["mask"], one["acquired"], one["ref"], one["maps"], one["network"]
                    images = {"zf": one["zf"], "network alone": net_image}
                    for w in BASELINE_WEIGHTS:
                        images[f"pics {w:g}"] = np.abs(pics(acquired, mask, maps, w)).astype(np.float32)
                    images["shipped average"] = blend_with_pics(net_image, acquired, mask, maps, solver="0.18")
                    for mu in mus:  # |x| on the object, the network elsewhere, lam = pics_weight_for(mask)
                        images[f"mu {mu:g}"] = combine_with_pics(net_image, one["coils"], acquired, mask, maps,
                                                                 mode="joint", mu=mu, solver="0.18")
                    row = per_case.setdefault(case.name, {})
                    for name in names:
                        row.setdefault(name, []).append(score(images[name], ref))
            means, best = rows[(kind, acc)] = setting_means(per_case, candidates)
            print(f"{kind} {acc:g}x: " + "; ".join(f"{k} {v[0]:.4f} / {v[1]:.2f}" for k, v in means.items()), flush=True)
    worst = target_ratio_table(rows, candidates)
    if args.confirm:
        ok = True
        for (kind, _), (means, best) in rows.items():
            def ratio(name, means=means, best=best):
                return min((means[name][0] - best["ssim"]) / 0.05, (means[name][1] - best["psnr"]) / 2.0)
            j, a = means[f"mu {CONFIRM_MU:g}"], means["shipped average"]
            holds = j[1] >= a[1] + 0.1 and j[0] >= a[0] - 0.002 and ratio(f"mu {CONFIRM_MU:g}") >= ratio("shipped average")
            ok = ok and holds
            print(f"{kind}: joint - average {j[0] - a[0]:+.4f} SSIM, {j[1] - a[1]:+.2f} dB; target ratio "
                  f"{ratio(f'mu {CONFIRM_MU:g}'):+.2f} against {ratio('shipped average'):+.2f}: {'holds' if holds else 'fails'}")
        print(f"\nthe joint (mu {CONFIRM_MU:g}) {'replaces' if ok else 'does not replace'} the shipped average up to 5.66x by the second rule")
        return 0
    star = max((f"mu {m:g}" for m in mus), key=lambda n: worst[n][0])
    ok = worst[star][0] >= worst["shipped average"][0] + 0.05 and worst[star][1] >= worst["shipped average"][1]
    print(f"\n{star}: worst ratio {worst[star][0]:+.2f} against the shipped average's {worst['shipped average'][0]:+.2f}, "
          f"mean SSIM {worst[star][1]:.4f} against {worst['shipped average'][1]:.4f}: "
          f"{'replaces the shipped average' if ok else 'does not replace the shipped average'} by the rule")
    return 0


if __name__ == "__main__":
    install_excepthook()
    raise SystemExit(main())
