"""A self-ensemble of the multi-coil network over symmetries of the problem, on VALIDATION only.

Why: the shipped multi-coil reconstruction is short of issue 19's target on validation (worst
setting: simulated 8x, +0.44 dB over zero-filled against +2 dB) and the gap is the network's
(trained on the 2-core CPU: 4 cascades, 0.5 M parameters). Without a GPU to train a bigger one,
the network can be run more than once. The problem has exact symmetries that keep a Cartesian
column mask: reversing the readout axis, and conjugating k-space (the image conjugated and
reversed), and both (`bundle.varnet.SYMMETRIES`). The CG-SENSE start is equivariant to them, the
UNets are not (they were trained with flips, so each pass is a fair reconstruction): averaging
the four passes' complex coil images, transformed back, averages part of the UNets' errors out
(the self-ensemble of Lim et al., EDSR, CVPR-W 2017, +0.1 to 0.2 dB there). The measured samples
are kept by every pass (final data consistency), so the average keeps them too. It costs four
network passes instead of one; PICS's solve is unchanged.

Candidates: the shipped reconstruction (network + PICS: the joint at 4x, the average at 8x,
`combine_with_pics` with the shipped defaults) with one network pass, and with the four-pass
self-ensemble (`bundle.varnet.ensemble_coil_images`) as its network. The network alone, one pass
and four, is printed beside them (no rule reads it).

Settings: the six of `multicoil_pics_iterations.py` (per band: the real validation phantoms, the
simulated IXI048, IXI048 and pyradiomics' brain1 with the readout oversampled twice); the test
scans are not read. Baseline per setting: the better of zero-filled RSS and PICS at its best of
0.003 / 0.01 / 0.03 (SigPy, 100 iterations).

Rule, written 2026-12-07 before any candidate was scored: the self-ensemble becomes the shipped
default only if, over the six settings (both bands, scored in the same runs), its mean PSNR is at
least 0.10 dB above one pass's, its mean SSIM at most 0.001 below it and its worst target ratio
(min over settings of min(dSSIM / 0.05, dPSNR / 2 dB) over the better baseline) at most 0.01
below it. Otherwise nothing ships, and the option stays out of the inference. Seconds per slice
of the network passes are printed; they do not enter the rule.

Result (2-core CPU, the two accelerations side by side, 17 minutes): **the rule keeps one pass.**
Over the six settings the self-ensemble's mean PSNR is 0.04 dB lower (27.59 against 27.63 dB),
its mean SSIM 0.0042 lower (0.7443 against 0.7485), its worst ratio +0.02 higher (+0.27 against
+0.25). SSIM / PSNR per setting, one pass -> self-ensemble:
- shipped: real 4x 0.7690 / 31.32 -> 0.7549 / 30.95; simulated 4x 0.8328 / 27.93 -> 0.8357 /
  27.99; oversampled 4x 0.8848 / 33.26 -> 0.8674 / 33.11; real 8x 0.6414 / 23.54 -> 0.6557 /
  23.70; simulated 8x 0.5889 / 22.34 -> 0.5956 / 22.37; oversampled 8x 0.7740 / 27.39 -> 0.7566 / 27.42.
- network alone: real 4x 0.7425 / 28.64 -> 0.7594 / 29.12; simulated 4x 0.8150 / 26.91 ->
  0.8216 / 27.14; oversampled 4x 0.8724 / 31.83 -> 0.8576 / 31.87; real 8x 0.6136 / 23.32 ->
  0.6340 / 23.54; simulated 8x 0.5716 / 22.11 -> 0.5804 / 22.17; oversampled 8x 0.7703 / 27.17
  -> 0.7546 / 27.25.
The network alone gains on every setting by PSNR (+0.04 to +0.48 dB) and by SSIM except on the
oversampled grids (-0.015 to -0.016), but joined with PICS the gain is gone: at 4x the joint from
the averaged image loses 0.37 dB on the real phantoms. Network seconds per slice (validation
grids): one pass 1.2 to 2.1 s with its share of the run, four passes 6.6 to 7.3 s. Not read
further: which symmetry costs the oversampled SSIM (a second candidate would need its own rule).

    python scripts/studies/multicoil_self_ensemble.py models/model_multicoil.pt --acceleration 4 --out e4.json
    python scripts/studies/multicoil_self_ensemble.py models/model_multicoil.pt --acceleration 8 --out e8.json
    python scripts/studies/multicoil_self_ensemble.py --decide e4.json e8.json

(4x and 8x can run at once, one per core).
"""

from __future__ import annotations

import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from bundle.errors import install_excepthook  # noqa: E402

ONE, ENSEMBLE = "shipped, one pass", "shipped, self-ensemble"
NET_ONE, NET_ENSEMBLE = "network alone, one pass", "network alone, self-ensemble"
CANDIDATES = (NET_ONE, NET_ENSEMBLE, ONE, ENSEMBLE)
from multicoil_pics_iterations import BASELINE_WEIGHTS, BASELINES  # noqa: E402  (the same baselines)


def score_sets(ckpt: str, sets: dict, acceleration: float) -> dict:
    import torch
    from multicoil_network_pics import network_slice
    from multicoil_oversampled_blend import setting_means

    from bundle.networks import load_checkpoint
    from bundle.parallel_imaging import combine_with_pics, pics
    from bundle.physics.mri_sense import rss
    from bundle.reporting.multicoil import MapsCache, score
    from bundle.varnet import VarNet, ensemble_coil_images, varnet_variant

    net = load_checkpoint(VarNet(**varnet_variant("cpu")), ckpt).eval()
    cache = MapsCache()
    names = [*BASELINES, *CANDIDATES]
    rows, seconds = {}, {"one pass": [], "self-ensemble": []}
    for kind, cases in sets.items():
        per_case: dict = {}
        for case in cases:
            for full in case.slices:
                one = network_slice(net, cache, case.name, full, acceleration)  # maps cached before the timings below
                mask, acquired, ref, maps = (one[k] for k in ("mask", "acquired", "ref", "maps"))
                t1 = time.perf_counter()
                with torch.no_grad():
                    net.coil_images(torch.from_numpy(acquired)[None], torch.from_numpy(mask).view(1, 1, 1, -1),
                                    torch.from_numpy(maps)[None])
                t2 = time.perf_counter()
                with torch.no_grad():
                    coils = ensemble_coil_images(net, torch.from_numpy(acquired)[None], torch.from_numpy(mask).view(1, 1, 1, -1),
                                                 torch.from_numpy(maps)[None])[0][0]
                t3 = time.perf_counter()
                seconds["one pass"].append(t2 - t1)
                seconds["self-ensemble"].append(t3 - t2)
                ens_image = rss(coils, 0).numpy()
                images = {"zf": one["zf"], NET_ONE: one["network"], NET_ENSEMBLE: ens_image,
                          ONE: combine_with_pics(one["network"], one["coils"], acquired, mask, maps),
                          ENSEMBLE: combine_with_pics(ens_image, coils.numpy(), acquired, mask, maps)}
                for w in BASELINE_WEIGHTS:
                    images[f"pics {w:g}"] = np.abs(pics(acquired, mask, maps, w)).astype(np.float32)
                row = per_case.setdefault(case.name, {})
                for name in names:
                    row.setdefault(name, []).append(score(images[name], ref))
        means, best = setting_means(per_case, CANDIDATES)
        rows[kind] = [{k: [float(x) for x in v] for k, v in means.items()}, best]
        print(f"{kind} {acceleration:g}x: " + "; ".join(f"{k} {v[0]:.4f} / {v[1]:.2f}" for k, v in means.items()), flush=True)
    return {"rows": rows, "acceleration": acceleration, "seconds": {k: float(np.mean(v)) for k, v in seconds.items()}}


def decide(paths: list[str]) -> int:
    from multicoil_oversampled_blend import target_ratio_table

    rows = {}
    for p in paths:
        with open(p) as f:
            part = json.load(f)
        a = part["acceleration"]
        print(f"{a:g}x: network seconds per slice " + ", ".join(f"{k} {v:.2f}" for k, v in part["seconds"].items()))
        for k, v in part["rows"].items():
            rows[(k, a)] = (v[0], {"ssim": max(v[0][b][0] for b in BASELINES), "psnr": max(v[0][b][1] for b in BASELINES)})
    if sorted({a for _, a in rows}) != [4.0, 8.0]:
        print("error: --decide: give the scores of both accelerations (4 and 8)")
        return 2
    worst = target_ratio_table(rows, list(CANDIDATES))
    psnr = {n: float(np.mean([m[n][1] for m, _ in rows.values()])) for n in CANDIDATES}
    for n in CANDIDATES:
        print(f"{n}: worst ratio {worst[n][0]:+.2f}, mean SSIM {worst[n][1]:.4f}, mean PSNR {psnr[n]:.2f}")
    ok = (psnr[ENSEMBLE] >= psnr[ONE] + 0.10 and worst[ENSEMBLE][1] >= worst[ONE][1] - 0.001
          and worst[ENSEMBLE][0] >= worst[ONE][0] - 0.01)
    print(f"mean PSNR {psnr[ENSEMBLE] - psnr[ONE]:+.3f} dB (needs +0.10), mean SSIM {worst[ENSEMBLE][1] - worst[ONE][1]:+.4f} "
          f"(needs >= -0.001), worst ratio {worst[ENSEMBLE][0] - worst[ONE][0]:+.3f} (needs >= -0.01)")
    print("the rule ships the self-ensemble" if ok else "the rule keeps one pass")
    return 0


if __name__ == "__main__":
    from multicoil_pics_iterations import run_study

    install_excepthook()
    raise SystemExit(run_study(__doc__ or "", score_sets, decide))
