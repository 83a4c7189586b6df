"""The multi-coil network of 0.12 (ESPIRiT maps in, a CG-SENSE start) began from the cascades of
the 0.11 network (learned maps, zero-filled start); this writes that starting point, and with
`--maps` prints what decided the design: CG-SENSE with the three kinds of maps on the real
validation phantoms (never the in-vivo brain: it is test).

    git show 67415a1:models/model_multicoil.pt > /tmp/model_multicoil_0.11.pt
    python scripts/studies/varnet_sense_start.py /tmp/model_multicoil_0.11.pt -o /tmp/varnet_start.pt
    python -m monai.bundle run training --meta_file configs/metadata.json --config_file \\
      "['configs/train.yaml','configs/train_multicoil.yaml','configs/train_multicoil_real.yaml']" \\
      --logging_file configs/logging.conf --pretrained /tmp/varnet_start.pt --ckpt_dir /tmp/mc
    python scripts/studies/varnet_sense_start.py /tmp/model_multicoil_0.11.pt --maps

--maps: SSIM / PSNR (scikit-image, whole image, data range = the reference maximum) of CG-SENSE
(20 iterations, weights 0.01, 0.03, 0.1) with its unacquired k-space filled into the acquired
samples and coil-combined by RSS, with ESPIRiT maps, the calibration lines' low-resolution maps,
and the maps the 0.11 network learned, at 4x and 8x.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bundle.errors import install_excepthook  # noqa: E402

VALIDATION = ("pulseq_phantom_32ch_64.h5", "pulseq_bottle_phantom_4ch_sol22.h5")


def start_weights(old: str, out: str) -> None:
    from bundle.networks import safe_load
    from bundle.varnet import VarNet, varnet_variant

    state = safe_load(old)
    net = VarNet(**varnet_variant("cpu"))
    missing, unexpected = net.load_state_dict({k: v for k, v in state.items() if not k.startswith("sensitivity.")},
                                              strict=False)
    if list(missing) != ["log_sense_weight"] or unexpected:
        from bundle.errors import InputError

        raise InputError(f"{old}: not the 0.11 multi-coil network (missing {missing}, unexpected {unexpected})")
    torch.save(net.state_dict(), out)
    print(f"wrote {out}: the 0.11 cascades, no sensitivity network, CG-SENSE weight starting at 0.03")


def compare_maps(old: str, shared: str) -> None:
    from bundle.networks import load_checkpoint
    from bundle.parallel_imaging import sensitivities
    from bundle.physics.mri import fft2c, ifft2c
    from bundle.physics.mri_sense import CartesianSense, estimate_sensitivities, norm_per_pixel, rss
    from bundle.physics.solvers import regularised_least_squares
    from bundle.reporting.multicoil import file_mask, real_cases, score
    from bundle.varnet import VarNet, mask_as_grid, varnet_variant

    net = load_checkpoint(VarNet(**varnet_variant("learned-cpu")), old).eval()
    for case in real_cases([os.path.join(shared, f) for f in VALIDATION]):
        full = torch.from_numpy(case.slices[0])
        ref = rss(ifft2c(full), 0).numpy()
        for acc in (4, 8):
            mask = torch.from_numpy(file_mask(case.name, full.shape[-1], acc))
            acquired = full * mask
            s = norm_per_pixel(acquired)
            y = acquired / s
            with torch.no_grad():
                learned = net.sensitivity(y[None], mask_as_grid(mask, tuple(y.shape[-2:])))[0]
            kinds = {"espirit": torch.from_numpy(sensitivities(acquired.numpy(), mask.numpy())),
                     "calibration": estimate_sensitivities(y, mask), "learned (0.11)": learned}
            for kind, maps in kinds.items():
                op = CartesianSense(maps, mask.float())
                row = []
                for w in (0.01, 0.03, 0.1):
                    x = regularised_least_squares(op, y, torch.zeros(y.shape[-2:], dtype=y.dtype), w, 20)
                    k = torch.where(mask.bool(), y, fft2c(x.unsqueeze(0) * maps))
                    ssim, psnr = score((rss(ifft2c(k), 0) * s).numpy().astype(np.float32), ref)
                    row.append(f"w {w:g}: {ssim:.3f} / {psnr:.2f} dB")
                print(f"{case.name} {acc}x {kind:15s} " + " | ".join(row))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", help="the 0.11 model_multicoil.pt (learned maps)")
    ap.add_argument("-o", "--output", help="write the starting weights here")
    ap.add_argument("--maps", action="store_true", help="CG-SENSE with ESPIRiT, calibration and learned maps")
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared", "data", "kspace", "multicoil"))
    args = ap.parse_args(argv)
    if args.output:
        start_weights(args.old, args.output)
    if args.maps:
        compare_maps(args.old, args.shared)
    return 0


if __name__ == "__main__":
    install_excepthook()
    raise SystemExit(main())
