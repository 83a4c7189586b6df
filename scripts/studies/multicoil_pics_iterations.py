"""Fewer solver iterations for the shipped multi-coil reconstruction, on VALIDATION only.

Why: PICS is the cost of the shipped reconstruction. At a fastMRI brain's size (640 x 320, 16
coils, 4x; `scripts/benchmark.py --sections multicoil`, 2-core CPU) the joint network + PICS takes
22.6 s per slice, of which the network with its ESPIRiT maps is 3.2 s: a 16-slice volume takes
about 6 minutes. Both SigPy solves (the joint at 4x, `bundle.parallel_imaging.network_pics`; the
PICS of the average at 8x, SigPy's `L1WaveletRecon`) run 100 accelerated proximal-gradient
iterations after 30 power iterations that only size the step (each costs a gradient step). The
joint starts from the network's image, which is close to its minimiser (mu = 0.01 pulls it
there), so it may need far fewer iterations; and the step can come from an analytic bound,
1 / (max sum_c |S_c|^2 + mu) (`network_pics(step="bound")`), with no power iterations.

Candidates, per band:
- 4x (the joint, from the network's image): SigPy's step and 100 iterations (shipped); the bound
  step with 100, 50, 30 and 20 iterations;
- 8x (the average: 0.8 x network + 0.2 x PICS on the object; PICS from zero as the baseline):
  `L1WaveletRecon`, 100 iterations (shipped); `network_pics` with mu 0 (PICS) and the bound step,
  100, 50, 30 and 20 iterations.

Settings per band: the three of `multicoil_oversampled_blend.py` (the real validation phantoms,
the simulated IXI048, IXI048 and pyradiomics' brain1 with the readout oversampled twice). The test
scans are not read. Baseline per setting: the better of zero-filled RSS and PICS at its best of
0.003 / 0.01 / 0.03 (SigPy's solver, 100 iterations, untouched: the baseline is the reference).

Rule, written 2026-12-07 before any candidate was scored: per band, the candidate with the fewest
iterations whose mean PSNR over the three settings is at most 0.05 dB below the shipped solver's,
whose mean SSIM is at most 0.002 below it and whose worst target ratio is at most 0.02 below it
(all scored in the same run) replaces the shipped solver in that band. If none passes, nothing
changes. Seconds per slice of each candidate's solve are printed; they do not enter the rule.

Result (2-core CPU, the two accelerations side by side, 17 minutes): **30 iterations with the bound
step replace the 0.18 solver in both bands** (0.19). Means over the three settings, SSIM / PSNR /
worst target ratio / seconds per slice of the solve:
- 4x (the joint): 0.18 solver 0.8308 / 30.89 dB / +0.40 / 2.68 s; bound 100 0.8308 / 30.89 /
  +0.40 / 2.16 s; bound 50 0.8315 / 30.91 / +0.40 / 1.10 s; **bound 30 0.8289 / 30.84 / +0.40 /
  0.67 s**; bound 20 0.8303 / 30.77 / +0.33 / 0.48 s (fails: the ratio).
- 8x (the average): 0.18 solver 0.6648 / 24.45 dB / +0.22 / 2.75 s; bound 100 0.6649 / 24.45 /
  +0.22 / 2.25 s; bound 50 0.6684 / 24.47 / +0.25 / 1.15 s; **bound 30 0.6681 / 24.42 / +0.25 /
  0.70 s**; bound 20 0.6662 / 24.36 / +0.24 / 0.48 s (fails: the PSNR).
Per setting, bound 30 against the 0.18 solver: real phantoms 4x -0.0056 SSIM / -0.14 dB (the
largest loss), simulated 4x 0.0000 / 0.00, oversampled 4x -0.0001 / -0.01; real 8x +0.0064 /
-0.11, simulated 8x +0.0036 / +0.06, oversampled 8x -0.0002 / -0.05. The bound step alone (100
iterations) gives the 0.18 images to the 4th decimal and saves the power iterations (-20 %).

`--confirmation` (after the decision, no rule: the two 1 mm volumes of
`multicoil_network_pics.py`, pyradiomics' brain2 and pycortex's S1, 6 slices each, which the rule
did not see), 0.18 solver against bound 30, SSIM / PSNR: 4x as acquired 0.8628 / 30.49 and
0.8628 / 30.49; 4x oversampled 0.8810 / 33.18 and 0.8810 / 33.17; 8x as acquired 0.6907 / 23.79
and 0.6900 / 23.74; 8x oversampled 0.7589 / 26.69 and 0.7582 / 26.62. At 4x nothing moves; at 8x
the 30 iterations cost 0.05-0.07 dB and 0.0007 SSIM on these volumes (25 and 11 minutes side by
side with the 8x part):

    python scripts/studies/multicoil_pics_iterations.py models/model_multicoil.pt --acceleration 4 --confirmation --out c4.json

    python scripts/studies/multicoil_pics_iterations.py models/model_multicoil.pt --acceleration 4 --out i4.json
    python scripts/studies/multicoil_pics_iterations.py models/model_multicoil.pt --acceleration 8 --out i8.json
    python scripts/studies/multicoil_pics_iterations.py --decide i4.json i8.json

(the two accelerations can run side by side, one per core).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from bundle.errors import install_excepthook  # noqa: E402

ITERATIONS = (100, 50, 30, 20)
SHIPPED = "shipped (SigPy step, 100)"
CANDIDATES = tuple(f"bound step, {k}" for k in ITERATIONS)
BASELINE_WEIGHTS = (0.003, 0.01, 0.03)
BASELINES = ("zf", *(f"pics {w:g}" for w in BASELINE_WEIGHTS))


def solves(net_image, coils, acquired, mask, maps, acceleration: float) -> dict:
    """{candidate: (image, seconds of its solve)} for one slice: the shipped combination and the
    bound-step candidates of the band of `acceleration`."""
    from bundle.parallel_imaging import (
        NETWORK_PICS_MU,
        blend_images,
        network_pics,
        pics,
        pics_blend_for,
        pics_mode_for,
        pics_weight_for,
    )

    mode, lam = pics_mode_for(mask), pics_weight_for(mask)
    blend = pics_blend_for(mask, mode)
    if mode == "joint":
        prior = (coils * np.conj(maps)).sum(0).astype(np.complex64)
        start, mu = prior, NETWORK_PICS_MU
    else:
        start, mu = np.zeros(acquired.shape[-2:], np.complex64), 0.0
    out = {}
    for name, k in ((SHIPPED, 100), *zip(CANDIDATES, ITERATIONS)):
        t0 = time.perf_counter()
        if name == SHIPPED:
            x = network_pics(acquired, mask, maps, lam, mu, start) if mode == "joint" else pics(acquired, mask, maps, lam)
        else:
            x = network_pics(acquired, mask, maps, lam, mu, start, iterations=k, step="bound")
        seconds = time.perf_counter() - t0
        out[name] = (blend_images(net_image, np.abs(x).astype(np.float32), blend), seconds)
    return out


def score_sets(ckpt: str, sets: dict, acceleration: float) -> dict:
    from multicoil_network_pics import network_slice
    from multicoil_oversampled_blend import setting_means

    from bundle.networks import load_checkpoint
    from bundle.parallel_imaging import pics
    from bundle.reporting.multicoil import MapsCache, score
    from bundle.varnet import VarNet, varnet_variant

    net = load_checkpoint(VarNet(**varnet_variant("cpu")), ckpt).eval()
    cache = MapsCache()
    names = [*BASELINES, "network alone", SHIPPED, *CANDIDATES]
    rows, seconds = {}, {n: [] for n in (SHIPPED, *CANDIDATES)}
    for kind, cases in sets.items():
        per_case: dict = {}
        for case in cases:
            for full in case.slices:
                one = network_slice(net, cache, case.name, full, acceleration)
                mask, acquired, ref, maps = (one[k] for k in ("mask", "acquired", "ref", "maps"))
                images = {"zf": one["zf"], "network alone": one["network"]}
                for w in BASELINE_WEIGHTS:
                    images[f"pics {w:g}"] = np.abs(pics(acquired, mask, maps, w)).astype(np.float32)
                for name, (image, s) in solves(one["network"], one["coils"], acquired, mask, maps, acceleration).items():
                    images[name] = image
                    seconds[name].append(s)
                row = per_case.setdefault(case.name, {})
                for name in names:
                    row.setdefault(name, []).append(score(images[name], ref))
        means, best = setting_means(per_case, ("network alone", SHIPPED, *CANDIDATES))
        rows[kind] = [{k: [float(x) for x in v] for k, v in means.items()}, best]
        print(f"{kind} {acceleration:g}x: " + "; ".join(f"{k} {v[0]:.4f} / {v[1]:.2f}" for k, v in means.items()), flush=True)
    return {"rows": rows, "acceleration": acceleration,
            "seconds": {k: float(np.mean(v)) for k, v in seconds.items()}}


def decide(paths: list[str]) -> int:
    from multicoil_oversampled_blend import target_ratio_table

    for p in paths:
        with open(p) as f:
            part = json.load(f)
        a = part["acceleration"]
        rows = {(k, a): (v[0], {"ssim": max(v[0][b][0] for b in BASELINES), "psnr": max(v[0][b][1] for b in BASELINES)})
                for k, v in part["rows"].items()}
        worst = target_ratio_table(rows, ["network alone", SHIPPED, *CANDIDATES])
        psnr = {n: float(np.mean([m[n][1] for m, _ in rows.values()])) for n in (SHIPPED, *CANDIDATES)}
        passing = []
        for n in (SHIPPED, *CANDIDATES):
            ok = (psnr[n] >= psnr[SHIPPED] - 0.05 and worst[n][1] >= worst[SHIPPED][1] - 0.002
                  and worst[n][0] >= worst[SHIPPED][0] - 0.02)
            if ok and n != SHIPPED:
                passing.append(n)
            print(f"{a:g}x {n}: worst ratio {worst[n][0]:+.2f}, mean SSIM {worst[n][1]:.4f}, mean PSNR {psnr[n]:.2f}, "
                  f"{part['seconds'][n]:.2f} s per slice" + ("" if n == SHIPPED else (": passes" if ok else ": fails")))
        winner = min(passing, key=lambda n: ITERATIONS[CANDIDATES.index(n)]) if passing else None
        print(f"{a:g}x: " + (f"the rule replaces the shipped solver by: {winner}" if winner else "the rule keeps the shipped solver") + "\n")
    return 0


def run_study(doc: str, score, decide_rule, argv: list[str] | None = None, settings=None) -> int:
    """The command line that the per-band multi-coil studies share: `score(ckpt, sets,
    acceleration)` on the validation settings (`settings(shared)` when given, or `--confirmation`'s
    1 mm volumes) into `--out`, or `decide_rule(paths)` with `--decide`."""
    from multicoil_network_pics import CONFIRM_SOURCES
    from multicoil_oversampled_blend import validation_settings, volume_settings
    from multicoil_validation import validation_parser

    from bundle.data.io import write_text_atomic

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", nargs="?", help="multi-coil weights (the cpu variant)")
    ap.add_argument("--acceleration", type=float, choices=(4.0, 8.0))
    ap.add_argument("--confirmation", action="store_true",
                    help="score on the two 1 mm volumes of multicoil_network_pics.py's confirmation (no rule)")
    ap.add_argument("--out", help="where the scores go (JSON)")
    ap.add_argument("--decide", nargs="+", metavar="JSON", help="apply the rule to the scores")
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared", "data"))
    args = ap.parse_args(argv)
    if args.decide:
        return decide_rule(args.decide)
    if not (args.ckpt and args.acceleration and args.out):
        ap.error("give CKPT --acceleration A --out JSON, or --decide JSON ...")
    parser = validation_parser()
    if args.confirmation:
        sets = volume_settings(parser, args.shared, CONFIRM_SOURCES, ("1 mm as acquired", "1 mm oversampled"))
    elif settings is not None:
        sets = settings(args.shared)
    else:
        sets = validation_settings(parser, args.shared)
    result = score(args.ckpt, sets, args.acceleration)
    write_text_atomic(args.out, json.dumps(result, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_study(__doc__ or "", score_sets, decide, argv)


if __name__ == "__main__":
    install_excepthook()
    raise SystemExit(main())
