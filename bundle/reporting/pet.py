"""`scripts/compare.py --pet`: low-count PET, the network on OSEM against post-filtered OSEM.

Cases: FDG phantoms (`bundle.data.pet_phantoms.phantom_volume`) of the MRI demo subjects, by
subject: the validation subject chooses OSEM's iterations and post-filter (best PSNR in the head at
each count level); the test subjects are used for nothing else. Each slice is scanned as in
inference (`PETAcquisition`: attenuation, 4 mm PSF, flat randoms + scatter of 50 % of the trues,
Poisson counts) at each count fraction.

Metrics, per test volume, inside the head (the mu-map's support):
- PSNR (data range: the truth's maximum in the head), SSIM (scikit-image's map, data range the
  same, averaged over the head), NRMSE (||x - t|| / ||t|| in the head);
- bias of the mean activity in grey and white matter (the phantom's classes): mean(x) / mean(t) - 1;
  and the same in their cores (`core_region`: the class's voxels whose 3 x 3 in-plane neighbours
  are all of that class), which separates the spill-over at tissue borders (partial volume of the
  scanner's blur) from an error of the activity scale;
- lesions (NEMA-style, over `realisations` noise realisations at each count level): contrast
  recovery CRC = (C - 1) / (C_true - 1) for hot, (1 - C) / (1 - C_true) for cold lesions, C the
  mean over realisations of mean(lesion) / mean(background ring 2 to 5 pixels outside it, in the
  brain, no lesions), against background variability: the ensemble standard deviation over the
  realisations of each background-ring pixel over its ensemble mean, averaged. Curves over OSEM
  iterations (1 to `max_iterations`) for each post-filter, the network as one point.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Sequence

import numpy as np
import torch

from bundle.data.io import write_text_atomic
from bundle.data.pet_phantoms import GM, WM, phantom_volume
from bundle.errors import InputError
from bundle.physics.pet import post_filter
from bundle.physics.pet_prior import bowsher_weights, map_em
from bundle.transforms.base import slice_seed

FRACTIONS = (0.25, 0.1, 0.05)
FILTERS_MM = (0.0, 2.0, 4.0, 6.0, 8.0)
EM_PASSES = (0, 1, 2)  # EM data-consistency passes after the network, chosen on validation
# The Bowsher MAP-EM baseline (`bundle.physics.pet_prior`): its strength beta_rel chosen with its
# iterations (1 to MAP_MAX_ITERATIONS, started from the network's input, OSEM 6 iterations) per count
# level on validation, as OSEM's filter. The weights come from the T1 smoothed by MAP_MR_FWHM_MM,
# 3 of 8 neighbours (`scripts/studies/pet_bowsher_t1.py`, validation subject): the raw 2 mm T1's
# weights see little of the phantom's tissue edges (its GM / WM contrast is near its voxel noise;
# R(truth) 0.84 of random weights', 0.59 smoothed by 4 mm), and MAP-EM with them is 0.10 dB over
# OSEM on the 16 central slices at 10 % against 0.61 dB smoothed by 4 mm (6 mm: 0.66).
# (A first grid, 0.003-0.03 and 10 iterations, chose its corner on the whole validation volume at
# 10 %: 0.003 and 10 iterations; hence the wider one.)
MAP_BETAS = (0.001, 0.003, 0.01, 0.03)
MAP_MAX_ITERATIONS = 20
MAP_MR_FWHM_MM = 4.0
MAP_NEIGHBOURS = 3


def core_region(region: torch.Tensor) -> torch.Tensor:
    """The (Z, H, W) voxels of `region` whose 3 x 3 in-plane neighbourhood lies inside it (a binary
    erosion of each slice by one pixel; outside the image counts as outside the region)."""
    outside = torch.nn.functional.pad(1 - region.float()[:, None], (1, 1, 1, 1), value=1.0)
    return torch.nn.functional.max_pool2d(outside, 3, 1)[:, 0] == 0


def load_case(path: str, seed: int, anatomy: bool = False) -> dict:
    """A phantom volume as (Z, H, W) tensors (axial slices, as the reconstructor takes them); with
    `anatomy`, "mr": the T1 it was made from, on the MR-guided network's scale (scaled over the
    whole T1 volume, as in training and inference)."""
    act, mu, classes, les, first = phantom_volume(path, seed=seed)

    def sl(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.transpose(a, (2, 1, 0))))

    cls = sl(classes)
    gm, wm = cls == GM, cls == WM
    case: dict = {"name": os.path.basename(path).split("-T1")[0], "activity": sl(act).float(), "mu": sl(mu).float(),
            "gm": gm, "wm": wm, "brain": gm | wm, "lesions": sl(les).long(), "head": sl(mu) > 0,
            "gm_core": core_region(gm), "wm_core": core_region(wm)}
    if anatomy:
        from bundle.data.pet_phantoms import load_head
        from bundle.transforms.pet import anatomy_image

        t1 = anatomy_image(load_head(path)[0])
        case["mr"] = sl(t1[..., first:first + classes.shape[-1]]).float()
    return case


def image_metrics(x: torch.Tensor, case: dict, with_ssim: bool = True) -> dict:
    """PSNR, SSIM, NRMSE in the head and grey / white matter mean bias of a (Z, H, W) volume."""
    t, head = case["activity"], case["head"]
    rng = float(t[head].max())
    err = (x - t)[head]
    out = {"psnr": float(10 * torch.log10(rng**2 / (err**2).mean())),
           "nrmse": float(err.norm() / t[head].norm()),
           "gm_bias": float(x[case["gm"]].mean() / t[case["gm"]].mean() - 1),
           "wm_bias": float(x[case["wm"]].mean() / t[case["wm"]].mean() - 1)}
    for tissue in ("gm", "wm"):
        core = case.get(f"{tissue}_core")
        if core is not None and bool(core.any()):
            out[f"{tissue}_core_bias"] = float(x[core].mean() / t[core].mean() - 1)
    if with_ssim:
        from skimage.metrics import structural_similarity

        vals = []
        for z in range(t.shape[0]):
            if head[z].any():
                _, smap = structural_similarity(t[z].numpy(), x[z].numpy(), data_range=rng, full=True)
                vals.append(smap[head[z].numpy()])
        out["ssim"] = float(np.concatenate(vals).mean())
    return out


def lesion_rois(case: dict) -> list[tuple[int, torch.Tensor, torch.Tensor, float, bool]]:
    """(slice, lesion ROI, background ring, true contrast, hot) for each lesion of the case."""
    from scipy import ndimage as ndi

    out = []
    les, t, brain = case["lesions"], case["activity"], case["brain"]
    for z in range(les.shape[0]):
        any_les = (les[z] != 0).numpy()
        for k in torch.unique(les[z]).tolist():
            if k == 0:
                continue
            roi = (les[z] == k).numpy()
            ring = ndi.binary_dilation(roi, iterations=5) & ~ndi.binary_dilation(roi, iterations=2)
            ring &= brain[z].numpy() & ~ndi.binary_dilation(any_les, iterations=1)
            if ring.sum() < 8:
                continue
            r, b = torch.from_numpy(roi), torch.from_numpy(ring)
            out.append((z, r, b, float(t[z][r].mean() / t[z][b].mean()), k > 0))
    return out


class LesionAccumulator:
    """Contrast and ensemble noise of one method over noise realisations."""

    def __init__(self, rois) -> None:
        self.rois = rois
        self.contrasts: list[list[float]] = []
        self.sum: torch.Tensor | None = None
        self.sumsq: torch.Tensor | None = None
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        self.contrasts.append([float(x[z][r].mean() / x[z][b].mean().clamp_min(1e-12)) for z, r, b, _, _ in self.rois])
        x64 = x.double()
        self.sum = x64 if self.sum is None else self.sum + x64
        self.sumsq = x64**2 if self.sumsq is None else self.sumsq + x64**2
        self.n += 1

    def result(self) -> dict:
        c = np.mean(np.asarray(self.contrasts), axis=0)
        hot = [(ci - 1) / (ct - 1) for ci, (_, _, _, ct, h) in zip(c, self.rois) if h]
        cold = [(1 - ci) / (1 - ct) for ci, (_, _, _, ct, h) in zip(c, self.rois) if not h]
        assert self.sum is not None and self.sumsq is not None
        mean = self.sum / self.n
        std = ((self.sumsq / self.n - mean**2).clamp_min(0) * self.n / max(self.n - 1, 1)).sqrt()
        rel = []
        for z, _, b, _, _ in self.rois:
            rel.append((std[z][b] / mean[z][b].clamp_min(1e-12)).mean())
        return {"crc_hot": float(np.mean(hot)) if hot else float("nan"),
                "crc_cold": float(np.mean(cold)) if cold else float("nan"),
                "noise": float(torch.stack(rel).mean()) if rel else float("nan"),
                "lesions": len(self.rois), "realisations": self.n}


def reconstruct_case(rec, case: dict, fraction: float, realisation: int, max_iterations: int,
                     filters: Sequence[float], on_osem, batch: int = 16,
                     em_passes: Sequence[int] = EM_PASSES, guided=None, map_betas: Sequence[float] = (),
                     map_iterations: int = 0, on_map=None) -> dict:
    """One noise realisation of a case at `fraction`: OSEM images at every iteration up to
    `max_iterations` and post-filter in `filters` go to on_osem(iteration, filter, (Z, H, W));
    returns {k: (Z, H, W)} the network's image (its input: OSEM at the acquisition's own
    iterations) followed by k EM passes, for each k in `em_passes` (0: the network alone), and with
    a `guided` reconstructor (the MR-guided network; the case's "mr") also {("mr", k): ...} of its
    network on the same OSEM input. A guided `rec` reads the case's "mr" too. For each beta in
    `map_betas`, the classical MR-guided baseline (Bowsher MAP-EM with the case's "mr", the
    acquisition's subsets) of the same counts goes to on_map(beta, iteration, (Z, H, W)) at every
    iteration up to `map_iterations`."""
    acq = rec.acquisition
    act, mu = case["activity"], case["mu"]
    z_all = [z for z in range(act.shape[0]) if float(act[z].max()) > 0]
    osem_at: dict[tuple[int, float], torch.Tensor] = {}
    map_at: dict[tuple[float, int], torch.Tensor] = {}
    recs = {"": rec} if guided is None else {"": rec, "mr": guided}
    nets: dict = {(k if tag == "" else (tag, k)): torch.zeros_like(act) for tag in recs for k in em_passes}
    for start in range(0, len(z_all), batch):
        idx = z_all[start:start + batch]
        gens = [torch.Generator().manual_seed(slice_seed(case["name"], z, fraction, realisation)) for z in idx]
        op, counts, bg = acq.simulate(act[idx], mu[idx], 2.0, [fraction] * len(idx), gens)
        net_input: list[torch.Tensor] = []
        raw: list[torch.Tensor] = []

        def keep(it: int, x: torch.Tensor, idx=idx, net_input=net_input, raw=raw) -> None:
            if it == acq.iterations:
                net_input.append(post_filter(x, acq.filter_mm, 2.0))
                raw.append(x.clone())
            for f in filters:
                key = (it, float(f))
                if key not in osem_at:
                    osem_at[key] = torch.zeros_like(act)
                osem_at[key][idx] = post_filter(x, f, 2.0)

        with torch.no_grad():
            acq.reconstruct(op, counts, bg, iterations=max(max_iterations, acq.iterations), filter_mm=0.0, callback=keep)
            if map_betas:
                weights = bowsher_weights(post_filter(case["mr"][idx], MAP_MR_FWHM_MM, 2.0), MAP_NEIGHBOURS)
            for beta in map_betas:
                def keep_map(it: int, x: torch.Tensor, idx=idx, beta=float(beta)) -> None:
                    if (beta, it) not in map_at:
                        map_at[(beta, it)] = torch.zeros_like(act)
                    map_at[(beta, it)][idx] = x

                map_em(op, counts, bg, weights, float(beta), iterations=map_iterations, subsets=acq.subsets,
                       callback=keep_map, start=raw[0])
        for tag, r in recs.items():
            net = r.network_on(net_input[0], mu[idx] > 0, case["mr"][idx] if r.guided else None)
            configured = r.em_iterations
            for k in em_passes:
                r.em_iterations = k
                nets[k if tag == "" else (tag, k)][idx] = r.finish(op, counts, bg, net)
            r.em_iterations = configured
    for (it, f), x in osem_at.items():
        on_osem(it, f, x)
    for (beta, it), x in map_at.items():
        on_map(beta, it, x)
    return nets


def pet_reconstructor(root: str, ckpt: str, option: str = "--pet-ckpt"):
    """configs/inference_pet.yaml's reconstructor on the CPU with the weights `ckpt` (the MR-guided
    network where the checkpoint's metadata says it has a guide channel)."""
    from monai.bundle import ConfigParser

    from bundle.networks import checkpoint_metadata, load_checkpoint

    if not os.path.isfile(ckpt):
        raise InputError(f"{option} {ckpt}: no such file")
    arch = (checkpoint_metadata(ckpt) or {}).get("architecture") or {}
    parser = ConfigParser()
    parser.read_config(os.path.join(root, "configs", "inference_pet.yaml"))
    parser["bundle_root"] = root
    parser["pet_anatomy"] = int(arch.get("guide_channels", 0)) > 0
    parser["ckpt_path"] = ckpt  # (the config's default names the shipped weights, and none ship for pet_anatomy)
    parser["device"] = "$torch.device('cpu')"
    parser["amp"] = False
    rec = parser.get_parsed_content("reconstructor")
    load_checkpoint(rec.network, ckpt)
    rec.network.eval()
    return rec


def run_pet(args, root: str) -> int:
    """Validation tuning, test metrics, lesion curves; report files into args.output_dir."""
    from bundle.data.demo import DEMO_DIR, DEMO_SPLIT
    from bundle.reporting.figures import save_figure

    rec = pet_reconstructor(root, args.pet_ckpt)
    mr_ckpt = getattr(args, "pet_mr_ckpt", None)
    guided = pet_reconstructor(root, mr_ckpt, "--pet-mr-ckpt") if mr_ckpt and mr_ckpt != "none" and \
        os.path.isfile(mr_ckpt) else None
    max_it = int(args.pet_max_iterations)
    if max_it < 1 or int(args.pet_realisations) < 2:
        raise InputError("--pet-max-iterations must be >= 1 and --pet-realisations >= 2")
    t1 = os.path.join(str(DEMO_DIR), "ixi_t1_2mm")
    anatomy = guided is not None
    val_case = load_case(os.path.join(t1, f"{DEMO_SPLIT['validation'][0]}-T1_ds.nii.gz"), seed=100, anatomy=anatomy)
    test_cases = [load_case(os.path.join(t1, f"{s}-T1_ds.nii.gz"), seed=200 + i, anatomy=anatomy)
                  for i, s in enumerate(DEMO_SPLIT["test"])]
    fractions = [float(f) for f in args.pet_fractions.split(",")]
    bowsher_opt = str(getattr(args, "pet_bowsher_fractions", "none"))
    try:
        bowsher_at = set() if guided is None or bowsher_opt == "none" else {float(f) for f in bowsher_opt.split(",")}
    except ValueError:
        raise InputError(f"--pet-bowsher-fractions {bowsher_opt}: count levels separated by commas, or none") from None
    out_dir = args.output_dir
    os.makedirs(os.path.join(out_dir, "figures"), exist_ok=True)

    # 1. OSEM's iterations and post-filter per count level, on the validation subject
    chosen: dict[float, tuple[int, float]] = {}
    tuning: dict[str, dict] = {}
    em_scores: dict = {k: [] for k in EM_PASSES}
    if guided is not None:
        em_scores.update({("mr", k): [] for k in EM_PASSES})
    chosen_map: dict[float, tuple[float, int]] = {}
    for f in fractions:
        scores: dict[tuple[int, float], float] = {}
        map_scores: dict[tuple[float, int], float] = {}
        nets = reconstruct_case(rec, val_case, f, 0, max_it, FILTERS_MM,
                                lambda it, flt, x, scores=scores: scores.__setitem__(
                                    (it, flt), image_metrics(x, val_case, False)["psnr"]), guided=guided,
                                map_betas=MAP_BETAS if f in bowsher_at else (), map_iterations=MAP_MAX_ITERATIONS,
                                on_map=lambda b, it, x, ms=map_scores: ms.__setitem__(
                                    (b, it), image_metrics(x, val_case, False)["psnr"]))
        chosen[f] = max(scores, key=lambda k: scores[k])
        tuning[f"{f:g}"] = {f"{it}it_{flt:g}mm": round(v, 3) for (it, flt), v in sorted(scores.items())}
        if map_scores:
            chosen_map[f] = max(map_scores, key=lambda k: map_scores[k])
            tuning[f"{f:g}"].update({f"bowsher_{b:g}_{it}it": round(v, 3) for (b, it), v in sorted(map_scores.items())})
            print(f"count fraction {f:g}: Bowsher MAP-EM beta_rel {chosen_map[f][0]:g}, {chosen_map[f][1]} iterations "
                  f"(validation PSNR {map_scores[chosen_map[f]]:.2f} dB)", flush=True)
        for k, x in nets.items():
            em_scores[k].append(image_metrics(x, val_case, False)["psnr"])
            tuning[f"{f:g}"][f"network_em{k}" if isinstance(k, int) else f"network_mr_em{k[1]}"] = round(em_scores[k][-1], 3)
        print(f"count fraction {f:g}: OSEM {chosen[f][0]} iterations, {chosen[f][1]:g} mm post-filter "
              f"(validation PSNR {scores[chosen[f]]:.2f} dB); network + 0 / 1 / 2 EM passes: "
              + " / ".join(f"{em_scores[k][-1]:.2f}" for k in EM_PASSES) + " dB"
              + ("" if guided is None else "; MR-guided: " + " / ".join(f"{em_scores[('mr', k)][-1]:.2f}" for k in EM_PASSES)
                 + " dB"), flush=True)
    from bundle.transforms.pet import tuned_baseline

    for f in fractions:  # the table that inference's `baseline_iterations: auto` reads
        shipped = tuned_baseline(f)
        agree = shipped == (int(chosen[f][0]), float(chosen[f][1]))
        print(f"count fraction {f:g}: inference's OSEM baseline (OSEM_BASELINE_BY_LEVEL) {shipped[0]} iterations, "
              f"{shipped[1]:g} mm: {'agrees' if agree else 'DIFFERS from this tuning'}", flush=True)
    em_best = max(EM_PASSES, key=lambda k: float(np.mean(em_scores[k])))
    print(f"EM passes after the network (best mean validation PSNR): {em_best}", flush=True)
    em_mr = None if guided is None else max(EM_PASSES, key=lambda k: float(np.mean(em_scores[("mr", k)])))
    if guided is not None:
        print(f"EM passes after the MR-guided network (best mean validation PSNR): {em_mr}", flush=True)

    # 2. test subjects: metrics (realisation 0) and lesion statistics (all realisations)
    rows: list[dict] = []
    curves: dict[str, dict] = {}
    panel = None
    for f in fractions:
        it_best, flt_best = chosen[f]
        for case in test_cases:
            rois = lesion_rois(case)
            acc = {key: LesionAccumulator(rois) for key in [(it, flt) for it in range(1, max_it + 1) for flt in FILTERS_MM]}
            acc_net: dict = {k: LesionAccumulator(rois) for k in (0, em_best)}
            if guided is not None:
                acc_net[("mr", em_mr)] = LesionAccumulator(rois)
            acc_map = LesionAccumulator(rois)
            beta_best, map_it = chosen_map.get(f, (0.0, 0))
            for r in range(int(args.pet_realisations)):
                best: dict[str, torch.Tensor] = {}

                def on_osem(it: int, flt: float, x: torch.Tensor, best=best, acc=acc,
                            chosen_key=(it_best, flt_best)) -> None:
                    acc[(it, flt)].add(x)
                    if (it, flt) == chosen_key:
                        best["osem"] = x.clone()

                def on_map(b: float, it: int, x: torch.Tensor, best=best, map_it=map_it, acc_map=acc_map) -> None:
                    if it == map_it:
                        acc_map.add(x)
                        best["map"] = x.clone()

                t0 = time.time()
                passes = sorted({0, em_best} | ({em_mr} if em_mr is not None else set()))
                nets = reconstruct_case(rec, case, f, r, max_it, FILTERS_MM, on_osem, em_passes=passes, guided=guided,
                                        map_betas=(beta_best,) if f in chosen_map else (), map_iterations=map_it,
                                        on_map=on_map)
                for k, a in acc_net.items():
                    a.add(nets[k])
                if r == 0:
                    methods_r0 = [("osem", best["osem"], f"{it_best} it, {flt_best:g} mm"),
                                  ("network", nets[0], f"OSEM {rec.acquisition.iterations} it + net"),
                                  ("network_em", nets[em_best], f"+ {em_best} EM pass(es)")]
                    if f in chosen_map:
                        methods_r0.append(("bowsher_map", best["map"], f"T1 Bowsher, beta {beta_best:g}, {map_it} it"))
                    if guided is not None:
                        methods_r0.append(("network_mr_em", nets[("mr", em_mr)], f"T1 + OSEM + net + {em_mr} EM"))
                    for method, x, setting in methods_r0:
                        rows.append({"fraction": f, "case": case["name"], "method": method, **image_metrics(x, case),
                                     "setting": setting})
                    if panel is None and abs(f - 0.1) < 1e-9:
                        panel = (case, best["osem"], nets[em_best], None if guided is None else nets[("mr", em_mr)],
                                 best.get("map"))
                print(f"{case['name']} at {f:g}: realisation {r + 1}/{args.pet_realisations} ({time.time() - t0:.0f} s)",
                      flush=True)
            curves.setdefault(f"{f:g}", {})[case["name"]] = {
                "osem": {f"{it},{flt:g}": a.result() for (it, flt), a in acc.items()},
                "network": acc_net[0].result(), "network_em": acc_net[em_best].result(),
                **({} if guided is None else {"network_mr_em": acc_net[("mr", em_mr)].result()}),
                **({"bowsher_map": acc_map.result()} if f in chosen_map else {}),
                "chosen": f"{it_best},{flt_best:g}"}

    # 3. report
    methods = ("osem", "network", "network_em") + (() if guided is None else ("bowsher_map", "network_mr_em"))
    summary = []
    for f in fractions:
        for method in methods:
            if method == "bowsher_map" and f not in chosen_map:
                continue
            sel = [r for r in rows if r["fraction"] == f and r["method"] == method]
            lesion = [curves[f"{f:g}"][c["name"]]["osem"][curves[f"{f:g}"][c["name"]]["chosen"]] if method == "osem"
                      else curves[f"{f:g}"][c["name"]][method] for c in test_cases]
            summary.append({"fraction": f, "method": method, "setting": sel[0]["setting"],
                            **{k: float(np.mean([r.get(k, np.nan) for r in sel]))
                               for k in ("psnr", "ssim", "nrmse", "gm_bias", "wm_bias", "gm_core_bias", "wm_core_bias")},
                            **{k: float(np.nanmean([x[k] for x in lesion])) for k in ("crc_hot", "crc_cold", "noise")}})
    matched = {f"{f:g}": matched_crc(curves[f"{f:g}"], test_cases, max_it, "network_em") for f in fractions}
    matched_mr = {} if guided is None else {
        f"{f:g}": matched_crc(curves[f"{f:g}"], test_cases, max_it, "network_mr_em") for f in fractions}
    lines = ["| count | method | setting | PSNR dB | SSIM | NRMSE | GM bias | WM bias | GM core bias | WM core bias | "
             "CRC hot | CRC cold | noise |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {100 * s['fraction']:g} % | {s['method']} | {s['setting']} | {s['psnr']:.2f} | {s['ssim']:.3f} | "
                     f"{s['nrmse']:.3f} | {100 * s['gm_bias']:+.1f} % | {100 * s['wm_bias']:+.1f} % | "
                     f"{100 * s['gm_core_bias']:+.1f} % | {100 * s['wm_core_bias']:+.1f} % | {s['crc_hot']:.2f} | "
                     f"{s['crc_cold']:.2f} | {100 * s['noise']:.1f} % |")
    lines += ["", "Lesion contrast recovery of OSEM at the network's background variability (interpolated along "
              "each post-filter's curve over iterations, the best filter), network + EM:", "",
              "| count | network noise | network CRC hot / cold | OSEM CRC hot / cold at that noise |", "|---|---|---|---|"]
    for f in fractions:
        m = matched[f"{f:g}"]
        lines.append(f"| {100 * f:g} % | {100 * m['noise']:.1f} % | {m['net_hot']:.2f} / {m['net_cold']:.2f} | "
                     f"{m['osem_hot']:.2f} / {m['osem_cold']:.2f}{'' if m['within'] else ' (beyond the OSEM curves: their end)'} |")
    if guided is not None:
        lines += ["", f"The same for the MR-guided network + EM (the T1 as a second input; `{mr_ckpt}`):", "",
                  "| count | network noise | network CRC hot / cold | OSEM CRC hot / cold at that noise |", "|---|---|---|---|"]
        for f in fractions:
            m = matched_mr[f"{f:g}"]
            lines.append(f"| {100 * f:g} % | {100 * m['noise']:.1f} % | {m['net_hot']:.2f} / {m['net_cold']:.2f} | "
                         f"{m['osem_hot']:.2f} / {m['osem_cold']:.2f}"
                         f"{'' if m['within'] else ' (beyond the OSEM curves: their end)'} |")
    header = (f"PET, {len(test_cases)} test subjects ({', '.join(c['name'] for c in test_cases)}), FDG phantoms, "
              f"OSEM {rec.acquisition.subsets} subsets with the iterations and post-filter of best validation PSNR "
              f"({val_case['name']}); lesion statistics over {args.pet_realisations} noise realisations. "
              "Means over the test subjects. Cores: the voxels whose 3 x 3 in-plane neighbours are all of the class ("
              + ", ".join(f"{c['name']} grey {int(c['gm_core'].sum())} of {int(c['gm'].sum())}, white "
                          f"{int(c['wm_core'].sum())} of {int(c['wm'].sum())}" for c in test_cases) + ").\n\n")
    write_text_atomic(os.path.join(out_dir, "pet.md"), header + "\n".join(lines) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(os.path.join(out_dir, "pet_per_case.csv"), buf.getvalue())
    write_text_atomic(os.path.join(out_dir, "pet.json"), json.dumps(
        {"summary": summary, "per_case": rows, "tuning": tuning, "curves": curves, "matched_crc": matched,
         "matched_crc_mr": matched_mr, "em_passes": em_best, "em_passes_mr": em_mr,
         "chosen": {f"{f:g}": list(v) for f, v in chosen.items()},
         "chosen_bowsher": {f"{f:g}": list(v) for f, v in chosen_map.items()}}, indent=1))
    _crc_figure(curves, fractions, test_cases, max_it, os.path.join(out_dir, "figures", "pet_crc.png"), save_figure)
    if panel is not None:
        _panel(*panel, os.path.join(out_dir, "figures", "pet_panel.png"), save_figure)
    listmode = os.path.join(root, "..", "shared", "data", "pet", "PET_ACQ_small.l.hdr.STIR")
    if os.path.isfile(listmode):
        rec.em_iterations = em_best
        listmode_figure(rec, listmode, os.path.join(out_dir, "figures", "pet_listmode.png"), save_figure)
    print("\n".join(lines))
    return 0


def listmode_figure(rec, path: str, out: str, save) -> dict:
    """The real list-mode smoke test as a figure: the binned prompts and delayed sinograms, the
    gaps, the OSEM baseline and the network. Returns the scan's numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bundle.data.petlink import gap_mask

    scan = rec.read_scan(path)
    result = rec.reconstruct_scan(scan, "listmode")
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.8))
    axes[0].imshow(scan.prompts, aspect="auto", cmap="gray_r")
    axes[0].set_title(f"prompts, all {scan.sinograms} sinograms summed\n{scan.notes}")
    axes[1].imshow(gap_mask(scan), aspect="auto", cmap="gray")
    axes[1].set_title("LORs through gap crystals (0 prompts)")
    for ax, key, title in ((axes[2], "osem", "OSEM baseline, tuned for its count level\n(no AC, no norm)"), (axes[3], "recon", f"network + {rec.em_iterations} EM pass(es)")):
        img = result[key][..., 0].T
        ax.imshow(img, cmap="gray_r", origin="lower", vmin=0, vmax=float(np.percentile(img, 99.8)))
        ax.set_title(title)
        ax.set_axis_off()
    fig.suptitle("Real Siemens mMR list-mode (0.6 s FDG): a smoke test. No reference image, no attenuation, "
                 "normalisation or scatter data: it shows the file is read and binned right, not accuracy", fontsize=10)
    fig.tight_layout()
    save(fig, out)
    return {"prompts": int(scan.prompts.sum()), "delayed": int(scan.delayed.sum()), "seconds": scan.duration_s}


def matched_crc(curves: dict, cases, max_it: int, method: str = "network") -> dict:
    """OSEM's hot and cold CRC at the network's background variability: along each post-filter's
    curve over iterations (means over the cases), linearly interpolated in noise; the best filter.
    `within` is False where the network's noise lies beyond every curve (then the curves' ends)."""
    net = {k: float(np.mean([curves[c["name"]][method][k] for c in cases])) for k in ("noise", "crc_hot", "crc_cold")}
    best = {"crc_hot": -np.inf, "crc_cold": -np.inf}
    within = False
    for flt in FILTERS_MM:
        pts = [{k: float(np.mean([curves[c["name"]]["osem"][f"{it},{flt:g}"][k] for c in cases]))
                for k in ("noise", "crc_hot", "crc_cold")} for it in range(1, max_it + 1)]
        pts.sort(key=lambda p: p["noise"])
        xs = [p["noise"] for p in pts]
        within |= xs[0] <= net["noise"] <= xs[-1]
        for k in best:
            best[k] = max(best[k], float(np.interp(net["noise"], xs, [p[k] for p in pts])))
    return {"noise": net["noise"], "net_hot": net["crc_hot"], "net_cold": net["crc_cold"],
            "osem_hot": best["crc_hot"], "osem_cold": best["crc_cold"], "within": bool(within)}


def _crc_figure(curves: dict, fractions, cases, max_it: int, path: str, save) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(fractions), figsize=(5 * len(fractions), 8), squeeze=False)
    for j, f in enumerate(fractions):
        for i, kind in enumerate(("crc_hot", "crc_cold")):
            ax = axes[i][j]
            for flt in FILTERS_MM:
                xs = [np.mean([curves[f"{f:g}"][c["name"]]["osem"][f"{it},{flt:g}"]["noise"] for c in cases])
                      for it in range(1, max_it + 1)]
                ys = [np.mean([curves[f"{f:g}"][c["name"]]["osem"][f"{it},{flt:g}"][kind] for c in cases])
                      for it in range(1, max_it + 1)]
                ax.plot(np.asarray(xs) * 100, ys, "o-", ms=3, label=f"OSEM, {flt:g} mm filter (1..{max_it} it)")
            points = [("network", "k*", "network"), ("network_em", "r*", "network + EM")]
            if "network_mr_em" in curves[f"{f:g}"][cases[0]["name"]]:
                points.append(("network_mr_em", "b*", "MR-guided network + EM"))
            if "bowsher_map" in curves[f"{f:g}"][cases[0]["name"]]:
                points.append(("bowsher_map", "gP", "Bowsher MAP-EM (T1 prior)"))
            for method, marker, label in points:
                nx = np.mean([curves[f"{f:g}"][c["name"]][method]["noise"] for c in cases]) * 100
                ny = np.mean([curves[f"{f:g}"][c["name"]][method][kind] for c in cases])
                ax.plot([nx], [ny], marker, ms=14, label=label)
            ax.set_xlabel("background variability (%)")
            ax.set_ylabel(f"CRC ({kind.split('_')[1]} lesions)")
            ax.set_title(f"{100 * f:g} % counts")
            ax.grid(alpha=0.3)
    # the legend where every marker appears (the Bowsher baseline may be scored at one level only)
    max(axes[0], key=lambda a: len(a.get_legend_handles_labels()[1])).legend(fontsize=7)
    fig.tight_layout()
    save(fig, path)


def _panel(case: dict, osem_img: torch.Tensor, net: torch.Tensor, net_mr: torch.Tensor | None,
           bowsher: torch.Tensor | None, path: str, save) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = int(torch.argmax((case["lesions"] != 0).sum((1, 2)) * 1000 + case["brain"].sum((1, 2))))
    t = case["activity"][z]
    vmax = float(t.max())
    shown = [("OSEM (best on validation)", osem_img[z]), ("network + EM", net[z])]
    if bowsher is not None:
        shown.append(("Bowsher MAP-EM (T1 prior)", bowsher[z]))
    if net_mr is not None:
        shown.append(("MR-guided network + EM", net_mr[z]))
    err_max = float(max((img - t).abs().max() for _, img in shown))
    cols = 1 + len(shown)
    fig, axes = plt.subplots(2, cols, figsize=(4 * cols, 8))
    for ax, (title, img) in zip(axes[0], [("truth", t), *shown]):
        ax.imshow(img.numpy(), cmap="gray_r", vmin=0, vmax=vmax, origin="lower")
        ax.set_title(title)
    if net_mr is not None and "mr" in case:
        axes[1][0].imshow(case["mr"][z].numpy(), cmap="gray", origin="lower")
        axes[1][0].contour((case["lesions"][z] != 0).numpy(), levels=[0.5], colors="r", linewidths=0.8, origin="lower")
        axes[1][0].set_title("T1 (guide), lesions in red")
    else:
        axes[1][0].imshow((case["lesions"][z] != 0).numpy(), cmap="gray", origin="lower")
        axes[1][0].set_title("inserted lesions")
    for ax, (title, img) in zip(axes[1][1:], shown):
        ax.imshow((img - t).abs().numpy(), cmap="magma", vmin=0, vmax=err_max, origin="lower")
        ax.set_title(f"|{title.split(' (')[0]} - truth|")
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(f"{case['name']}, slice {z}, 10 % counts")
    fig.tight_layout()
    save(fig, path)
