"""PET on FDG phantoms made from T1 heads of other sources: how the network, trained on phantoms of
7 IXI heads, does against the OSEM baseline on heads from other scanners and sites.

Why: the MRI lesson (release 0.6.3) was that cross-site gains are about two thirds of same-site
gains; the PET card's numbers are on two IXI test subjects of the training site only.

Cases: the three 1 mm T1 volumes of the MRI generalisation table (Colin27, the niivue demo T1,
pycortex's S1; `../shared/data/mri/single`; none used in any PET step), each averaged over 2 x 2 x 2
voxel blocks to the 2 mm grid of the IXI demo heads, then made into an FDG phantom exactly as the
training and test phantoms are (`bundle.data.pet_phantoms.phantom_volume`: tissue classes, lesions,
mu-map; seeds 300, 301, 302). Each is run through `configs/inference_pet.yaml`'s reconstructor (the
shipped weights; the OSEM baseline tuned on validation for the count level; network + 1 EM pass)
at 25, 10 and 5 % of the full count, one noise realisation seeded by the data, and scored as
`scripts/compare.py --pet` scores (`bundle.reporting.pet.image_metrics`: PSNR, SSIM and NRMSE in
the head, grey / white matter bias, whole classes and cores). Nothing is chosen here.

    python scripts/studies/pet_other_sources.py          # 2-core CPU: 2 minutes

Result (0.20 weights = 0.17's, 2-core CPU, 2 minutes), means over the three heads, PSNR dB / SSIM,
OSEM (tuned) against network + EM: 25 % 23.59 / 0.697 against 23.81 / 0.746 (+0.22 dB); **10 %
23.00 / 0.654 against 22.97 / 0.700 (-0.03 dB, +0.046 SSIM)**; 5 % 22.45 / 0.600 against 22.19 /
0.650 (-0.26 dB). Network - OSEM per head (Colin27, niivue, S1): 25 % -0.19, +0.60, +0.25; 10 %
-0.28, +0.21, -0.03; 5 % -0.48, -0.08, -0.22 dB. Grey / white bias at 10 %, whole classes: OSEM
-25.8 / +44.5 %, network -19.3 / +35.5 %; cores: OSEM -5.0 / +14.5 %, network +0.8 / +4.7 %.
On the IXI test subjects (same site as training) the network is +0.22 dB / +0.062 SSIM at 10 %:
across sites the SSIM gain mostly holds (+0.046) and the PSNR gain is gone. (After this run
Colin27 became a validation head of `pet_randomised_phantoms.py`; niivue and S1 stay test.)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from bundle.errors import install_excepthook  # noqa: E402

SOURCES = ("mri/single/colin27_t1.nii.gz", "mri/single/niivue_otsu_t1.nii.gz", "mri/single/pycortex_s1_t1.nii.gz")
FRACTIONS = (0.25, 0.1, 0.05)
KEYS = ("psnr", "ssim", "nrmse", "gm_bias", "wm_bias", "gm_core_bias", "wm_core_bias")


def to_2mm(path: str, out: str) -> None:
    """A 1 mm T1 (any orientation) as RAS, averaged over 2 x 2 x 2 blocks, written to `out`."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(path))
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    if not np.allclose(zooms, 1.0, atol=0.01):
        raise SystemExit(f"error: {path}: {zooms} mm voxels; this study takes 1 mm volumes")
    data = np.asarray(img.dataobj, dtype=np.float32)
    x, y, z = (s // 2 * 2 for s in data.shape[:3])
    blocks = data[:x, :y, :z].reshape(x // 2, 2, y // 2, 2, z // 2, 2).mean((1, 3, 5))
    affine = img.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([0.5, 0.5, 0.5])  # the block's centre
    affine[:3, :3] *= 2
    nib.save(nib.Nifti1Image(blocks, affine), out)


def main(argv: list[str] | None = None) -> int:
    import torch
    from pet_pixel_size import reconstructor

    from bundle.reporting.pet import image_metrics, load_case

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared", "data"))
    args = ap.parse_args(argv)
    recs = {f: reconstructor(count_fraction=f) for f in FRACTIONS}
    rows: dict[tuple[float, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, source in enumerate(SOURCES):
            path = os.path.join(args.shared, source)
            if not os.path.isfile(path):
                raise SystemExit(f"error: {path}: not found (this study needs ../shared/data)")
            name = os.path.basename(source).split(".")[0]
            t1 = os.path.join(tmp, f"{name}-T1_ds.nii.gz")
            to_2mm(path, t1)
            case = load_case(t1, seed=300 + i)
            act = case["activity"].numpy().transpose(2, 1, 0)  # (Z, Y, X) -> the RAS (X, Y, Z) the reconstructor takes
            mu = case["mu"].numpy().transpose(2, 1, 0)
            for f, rec in recs.items():
                out = rec.reconstruct(np.ascontiguousarray(act), (2.0, 2.0, 2.0), name, np.ascontiguousarray(mu))
                for method, key in (("OSEM (tuned)", "osem"), ("network + EM", "recon")):
                    x = torch.from_numpy(np.ascontiguousarray(out[key].transpose(2, 1, 0))).float()
                    m = image_metrics(x, case)
                    rows.setdefault((f, method), []).append(m)
                    print(f"{name} {100 * f:g} % {method}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}, "
                          f"GM / WM bias {100 * m['gm_bias']:+.1f} / {100 * m['wm_bias']:+.1f} % "
                          f"(cores {100 * m['gm_core_bias']:+.1f} / {100 * m['wm_core_bias']:+.1f} %)", flush=True)
    print("\nMeans over the three heads:\n\n| count | method | PSNR dB | SSIM | NRMSE | GM bias | WM bias | GM core bias | "
          "WM core bias |\n|---|---|---|---|---|---|---|---|---|")
    for (f, method), ms in rows.items():
        v = {k: float(np.mean([m[k] for m in ms])) for k in KEYS}
        print(f"| {100 * f:g} % | {method} | {v['psnr']:.2f} | {v['ssim']:.3f} | {v['nrmse']:.3f} | {100 * v['gm_bias']:+.1f} % | "
              f"{100 * v['wm_bias']:+.1f} % | {100 * v['gm_core_bias']:+.1f} % | {100 * v['wm_core_bias']:+.1f} % |")
    for f in FRACTIONS:
        gains = [n["psnr"] - o["psnr"] for o, n in zip(rows[(f, "OSEM (tuned)")], rows[(f, "network + EM")])]
        print(f"{100 * f:g} %: network - OSEM PSNR per head " + ", ".join(f"{g:+.2f}" for g in gains) + " dB")
    return 0


if __name__ == "__main__":
    install_excepthook()
    raise SystemExit(main())
