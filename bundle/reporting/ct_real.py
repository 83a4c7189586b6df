"""`scripts/compare.py --ct-real`: CT from REAL measured fan-beam scans (HTC2022), the network
(then data consistency with the measured sinogram) against FBP and the TV baseline, at 60 and 30
views over 360 degrees and a 90-degree limited angle, against the organisers' full-data FBP.

Metrics: PSNR and SSIM (scikit-image, data range the reference's max - min, the whole 512 x 512
grid) and the HTC2022 score: the Matthews correlation coefficient of the Otsu-thresholded
reconstruction against the organisers' segmentation. The TV weight is tuned for each setting and
the DC weight at 60 views, both on the training scans; the test scans are used for nothing else.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from bundle.data.ctraw import MeasuredScan, choose_views, read_measured_ct
from bundle.data.io import write_text_atomic
from bundle.errors import InputError
from bundle.inference.ct_measured import MeasuredCTReconstructor
from bundle.physics.ct_fan import select_views
from bundle.reporting.comparison import parse_weights, shared_files

SHARED_CT = os.path.join("..", "shared", "data", "ct_real", "htc2022_train")
CT_TRAIN = ("htc2022_solid_disc_full.mat", "htc2022_ta_full.mat", "htc2022_tb_full.mat")
CT_VALIDATION = ("htc2022_tc_full.mat",)  # selected the training epoch: reported, flagged
CT_TEST = ("htc2022_td_full.mat",)  # never used in training or tuning


@dataclass(frozen=True)
class Setting:
    name: str
    views: int | None
    arc: float
    start: float = 0.0


SETTINGS = (Setting("60 views / 360 deg", 60, 360.0), Setting("30 views / 360 deg", 30, 360.0),
            Setting("90 deg limited angle", None, 90.0))


def subset(scan: MeasuredScan, setting: Setting) -> MeasuredScan:
    """The sparse or limited-angle scan of `setting` taken from a full one (the measured views)."""
    angles = torch.rad2deg(scan.geometry.angles()).tolist()
    idx = choose_views(angles, setting.views, setting.arc, setting.start)
    return replace(scan, sinogram=np.ascontiguousarray(scan.sinogram[:, idx]), geometry=select_views(scan.geometry, idx))


def mcc(a: np.ndarray, b: np.ndarray) -> float:
    """Matthews correlation coefficient of two binary images (HTC2022's score)."""
    a, b = a.astype(bool).ravel(), b.astype(bool).ravel()
    tp, tn = float((a & b).sum()), float((~a & ~b).sum())
    fp, fn = float((a & ~b).sum()), float((~a & b).sum())
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom > 0 else 0.0


def score(recon: np.ndarray, reference: np.ndarray, segmentation: np.ndarray | None) -> dict[str, float]:
    """PSNR, SSIM (data range of the reference) and, with a segmentation, the Otsu MCC."""
    from skimage.filters import threshold_otsu
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = float(reference.max() - reference.min())
    out = {"psnr": float(peak_signal_noise_ratio(reference, recon, data_range=rng)),
           "ssim": float(structural_similarity(reference, recon, data_range=rng))}
    if segmentation is not None:
        out["mcc"] = mcc(recon > threshold_otsu(recon), segmentation)
    return out


def run_method(rec: MeasuredCTReconstructor, scan: MeasuredScan, **settings) -> tuple[np.ndarray, float]:
    """(the recon of the scan's first slice, seconds) with the reconstructor's settings changed."""
    old = {k: getattr(rec, k) for k in settings}
    for k, v in settings.items():
        setattr(rec, k, v)
    try:
        t = time.perf_counter()
        out = rec.reconstruct_scan(scan, os.path.basename(scan.path))["recon"][..., 0]
        return out, time.perf_counter() - t
    finally:
        for k, v in old.items():
            setattr(rec, k, v)


def tune(rec: MeasuredCTReconstructor, scans: list[MeasuredScan], setting: Setting, key: str, weights: list[float],
         **fixed) -> tuple[float, dict[float, float]]:
    """The weight (`key`: tv_weight or dc_weight) of best mean PSNR over `scans` in `setting`
    (a grid of one weight is taken as given: nothing runs)."""
    if len(weights) == 1:
        return weights[0], {}
    table = {}
    for w in weights:
        psnrs = []
        for scan in scans:
            s = subset(scan, setting)
            recon, _ = run_method(rec, s, **{key: w}, **fixed)
            assert scan.reference is not None
            psnrs.append(score(recon, scan.reference[0], None)["psnr"])
        table[w] = float(np.mean(psnrs))
    return max(table, key=lambda w: table[w]), table


def run_ct_real(args, root: str) -> int:
    from monai.bundle import ConfigParser

    from bundle.networks import load_checkpoint

    train = args.ct_train if args.ct_train is not None else shared_files(root, SHARED_CT, CT_TRAIN)
    tests = args.ct_test if args.ct_test is not None else shared_files(root, SHARED_CT, CT_VALIDATION + CT_TEST)
    if not train or not tests:
        raise InputError(f"--ct-real needs measured scans with references: none given and {SHARED_CT} is absent")
    overlap = {os.path.basename(p) for p in train} & {os.path.basename(p) for p in tests}
    if overlap:
        raise InputError(f"--ct-train and --ct-test share {', '.join(sorted(overlap))}")
    tv_grid = parse_weights(args.tv_weights, "--tv-weights")
    dc_grid = parse_weights(args.dc_weights, "--dc-weights")
    train_scans = [read_measured_ct(p) for p in train]
    test_scans = [read_measured_ct(p) for p in tests]
    for s in train_scans + test_scans:
        if s.reference is None:
            raise InputError(f"{s.path}: no full-data reference beside it (<name>_recon_fbp.mat)")
    parser = ConfigParser()
    parser.read_config(os.path.join(root, "configs", "inference_ct.yaml"))
    parser["bundle_root"] = root
    network = parser.get_parsed_content("measured_network_def")  # the network inference builds
    load_checkpoint(network, args.ct_ckpt, "cpu")
    rec = MeasuredCTReconstructor(network, tv_iterations=args.tv_iterations, progress=False)
    os.makedirs(args.output_dir, exist_ok=True)

    tuned: dict[str, dict] = {}
    tuning = [s for s in train_scans if "solid_disc" not in s.path] or train_scans  # the disc has no structure
    dc_weights = {}
    for setting in (SETTINGS[0], SETTINGS[2]):  # full circle (sparse) and limited angle
        dc_weights[setting.name], dc_table = tune(rec, tuning, setting, "dc_weight", dc_grid, method="network",
                                                  dc_weight_limited=None)
        print(f"DC weight (training scans, {setting.name}): {dc_weights[setting.name]:g}  PSNR by weight {dc_table}",
              flush=True)
    dc_weight, dc_limited = dc_weights[SETTINGS[0].name], dc_weights[SETTINGS[2].name]
    rows = []
    for setting in SETTINGS:
        tv_weight, tv_table = tune(rec, tuning, setting, "tv_weight", tv_grid, method="tv")
        tuned[setting.name] = {"tv_weight": tv_weight, "tv_psnr_by_weight": tv_table}
        print(f"{setting.name}: TV weight {tv_weight:g} (training scans: PSNR by weight {tv_table})", flush=True)
        for scan in test_scans:
            s = subset(scan, setting)
            assert scan.reference is not None
            ref, seg = scan.reference[0], None if scan.segmentation is None else scan.segmentation[0]
            methods: dict[str, dict] = {
                "fbp": dict(method="fbp"),
                "tv": dict(method="tv", tv_weight=tv_weight),
                "network": dict(method="network", dc_iterations=0),
                "network+dc": dict(method="network", dc_weight=dc_weight, dc_weight_limited=dc_limited),
            }
            images = {}
            for name, kw in methods.items():
                recon, seconds = run_method(rec, s, **kw)
                images[name] = recon
                row = {"setting": setting.name, "scan": os.path.basename(scan.path), "method": name,
                       "role": "validation" if os.path.basename(scan.path) in CT_VALIDATION else "test",
                       "views": s.geometry.n_views, **score(recon, ref, seg), "seconds": seconds}
                rows.append(row)
                print(f"  {row['scan']} {name:10s} PSNR {row['psnr']:.2f}  SSIM {row['ssim']:.4f}  "
                      f"MCC {row.get('mcc', float('nan')):.3f}  {seconds:.1f} s", flush=True)
            _figure(images, ref, os.path.join(args.output_dir, f"{os.path.splitext(os.path.basename(scan.path))[0]}_"
                                              f"{setting.views or 'all'}v{setting.arc:g}.png"), setting.name)
    _write(rows, tuned, {"full circle": dc_weight, "limited angle": dc_limited}, args.output_dir)
    return 0


def _figure(images: dict[str, np.ndarray], ref: np.ndarray, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bundle.reporting.figures import save_figure

    names = ["reference", *images]
    fig, axes = plt.subplots(2, len(names), figsize=(3 * len(names), 6))
    vmax = float(np.percentile(ref, 99.9))
    for i, name in enumerate(names):
        img = ref if name == "reference" else images[name]
        axes[0, i].imshow(img, cmap="gray", vmin=0, vmax=vmax)
        axes[0, i].set_title(name)
        axes[1, i].imshow(img - ref, cmap="bwr", vmin=-vmax / 4, vmax=vmax / 4)
        axes[1, i].set_title("minus reference" if name != "reference" else "")
        for ax in axes[:, i]:
            ax.axis("off")
    fig.suptitle(f"{os.path.basename(path)}: {title} (1/mm; errors at +-{vmax / 4:.3g})")
    save_figure(fig, path)
    plt.close(fig)


def _write(rows: list[dict], tuned: dict, dc_weight: dict, output_dir: str) -> None:
    lines = ["| setting | scan (role) | method | PSNR dB | SSIM | MCC (Otsu) | s/slice |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['scan']} ({r['role']}) | {r['method']} | {r['psnr']:.2f} | "
                     f"{r['ssim']:.4f} | {r.get('mcc', float('nan')):.3f} | {r['seconds']:.1f} |")
    lines.append("")
    lines.append("DC weights " + ", ".join(f"{k}: {v:g}" for k, v in dc_weight.items()) + "; TV weights " + ", ".join(f"{k}: {v['tv_weight']:g}" for k, v in tuned.items())
                 + " (all tuned on the training scans).")
    write_text_atomic(os.path.join(output_dir, "ct_real.md"), "\n".join(lines) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["setting", "scan", "role", "method", "views", "psnr", "ssim", "mcc",
                                             "seconds"])
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in writer.fieldnames})
    write_text_atomic(os.path.join(output_dir, "ct_real.csv"), buf.getvalue())
    write_text_atomic(os.path.join(output_dir, "ct_real_tuning.json"),
                      json.dumps({"dc_weight": dc_weight, **tuned}, indent=1, default=str))
    print("\n".join(lines))
