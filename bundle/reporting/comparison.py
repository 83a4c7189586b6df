"""Side-by-side comparison of reconstruction methods on the same cases: zero-filled, compressed
sensing and the network (with and without data consistency), with per-volume metrics, summary
statistics (mean, std, 95% confidence interval) and timing."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from scipy import stats
from tqdm import tqdm

from bundle.data.datasets import SliceDataset
from bundle.evaluation import mean_std
from bundle.metrics import VolumeAccumulator
from bundle.reporting.compressed_sensing import cs_reconstruct

Method = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
REPORT_METRICS = ("ssim", "psnr", "nmse", "vif")


def to_complex(kspace: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) real/imaginary channels -> (N, 1, H, W) complex."""
    return torch.complex(kspace[:, 0:1].float(), kspace[:, 1:2].float())


def zero_filled_method() -> Method:
    return lambda image, kspace, mask: image


def cs_method(lam: float, iterations: int = 50) -> Method:
    return lambda image, kspace, mask: cs_reconstruct(to_complex(kspace), mask, lam, iterations).abs()


def network_method(network: torch.nn.Module, data_consistency: bool, device: str | torch.device = "cpu") -> Method:
    network = network.eval().to(device)

    @torch.no_grad()
    def run(image, kspace, mask):
        previous = network.data_consistency
        setattr(network, "data_consistency", data_consistency)  # noqa: B010 (a flag, not a submodule)
        try:
            return network(image.to(device), kspace=kspace.to(device), mask=mask.to(device)).cpu()
        finally:
            setattr(network, "data_consistency", previous)  # noqa: B010

    return run


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample std and the 95% confidence interval of the mean (Student t) of `values`."""
    s = mean_std(values)
    n, mean, std = s["n"], s["mean"], s["std"]
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def compare_volumes(
    volumes: Iterable[tuple[str, float, Mapping[str, torch.Tensor]]],
    methods: Mapping[str, Method],
    batch_size: int = 16,
    keep: Callable[[str, int, int], bool] | None = None,
) -> tuple[dict, dict, dict]:
    """Run every method on every volume.

    Args:
        volumes: (name, volume_max, slices) with slices {"image", "label", "kspace", "mask"} stacked
            over the volume's slices ((S, 1, H, W), (S, 1, H, W), (S, 2, H, W), (S, 1, 1, W)).
        methods: name -> method(image, kspace, mask) -> reconstruction.
        keep: (volume name, slice index, number of slices) -> whether to keep that slice's images
            for figures.

    Returns:
        per_volume {method: {volume: {metric: value}}}, seconds per slice {method: float},
        kept images {(volume, slice): {"reference", "mask", method...}}.
    """
    accs = {m: VolumeAccumulator(metrics=REPORT_METRICS) for m in methods}
    seconds = {m: 0.0 for m in methods}
    n_slices = 0
    kept: dict = {}
    for name, vmax, sl in volumes:
        n = sl["image"].shape[0]
        n_slices += n
        for method, fn in methods.items():
            outs = []
            for s in range(0, n, batch_size):
                b = slice(s, s + batch_size)
                t0 = time.perf_counter()
                outs.append(fn(sl["image"][b], sl["kspace"][b], sl["mask"][b]).float())
                seconds[method] += time.perf_counter() - t0
            recon = torch.cat(outs)
            accs[method].add(recon, sl["label"], name, vmax)
            for i in range(n):
                if keep is not None and keep(name, i, n):
                    entry = kept.setdefault((name, i), {"reference": sl["label"][i, 0], "mask": sl["mask"][i, 0, 0]})
                    entry[method] = recon[i, 0]
    per_volume = {m: a.per_volume() for m, a in accs.items()}
    return per_volume, {m: s / max(n_slices, 1) for m, s in seconds.items()}, kept


def summary_table(per_volume: Mapping, seconds: Mapping) -> tuple[str, list[list]]:
    """A markdown table and CSV rows: mean ± std [95% CI] per metric, seconds per slice."""
    md = ["| method | SSIM | PSNR (dB) | NMSE | VIF | s / slice |", "|---|---|---|---|---|---|"]
    rows: list[list] = [["method", "metric", "mean", "std", "ci95_low", "ci95_high", "n"]]
    for method, volumes in per_volume.items():
        cells = []
        for metric in REPORT_METRICS:
            s = summarize([v[metric] for v in volumes.values()])
            fmt = "{:.2f}" if metric == "psnr" else "{:.4f}"
            ci = f" [{fmt.format(s['ci_low'])}, {fmt.format(s['ci_high'])}]" if s["n"] > 1 else ""
            cells.append(f"{fmt.format(s['mean'])} ± {fmt.format(s['std'])}{ci}")
            rows.append([method, metric, s["mean"], s["std"], s["ci_low"], s["ci_high"], s["n"]])
        rows.append([method, "seconds_per_slice", seconds[method], "", "", "", ""])
        md.append(f"| {method} | " + " | ".join(cells) + f" | {seconds[method]:.4f} |")
    return "\n".join(md) + "\n", rows


def volume_slices(parser, items: list[dict], desc: str):
    """Yield (name, volume_max, stacked slices) per volume, loaded and undersampled exactly as in
    validation, from a `monai.bundle.ConfigParser` holding train.yaml."""
    volume_transform = parser.get_parsed_content("volume_transforms")
    slice_transform = parser.get_parsed_content("validate#preprocessing")
    axis, min_fg = parser.get_parsed_content("slice_axis"), parser.get_parsed_content("min_foreground")
    for item in tqdm(items, desc=desc, unit="vol"):
        ds = SliceDataset([item], volume_transform, slice_transform, axis, min_fg, progress=False)
        slices = [ds[i] for i in range(len(ds))]
        stacked = {k: torch.stack([s[k] for s in slices]) for k in ("image", "label", "kspace", "mask", "pixel_spacing")}
        yield os.path.basename(item["image"]), float(slices[0]["volume_max"]), stacked


def tune_cs(parser, items, lambdas, iterations) -> tuple[float, dict]:
    """The CS weight with the best mean SSIM on `items` (validation volumes)."""
    methods = {f"{lam:g}": cs_method(lam, iterations) for lam in lambdas}
    per_volume, _, _ = compare_volumes(volume_slices(parser, items, "tuning CS on validation"), methods)
    scores = {lam: sum(v["ssim"] for v in per_volume[f"{lam:g}"].values()) / len(per_volume[f"{lam:g}"])
              for lam in lambdas}
    return max(scores, key=lambda lam: scores[lam]), {f"{k:g}": v for k, v in scores.items()}


def report_config(config: str, bundle_root: str, acceleration: float, mask_type: str, dataset_dir: str | None,
                  datalist: str | None, split: str, overrides: Sequence[str] = ()):
    """Read `config` (train.yaml) for the report scripts with their options applied; check them.

    `overrides` are "key=value" strings (JSON values for lists and numbers). Returns the parser and
    the `split` items of the datalist.
    """
    import json

    from monai.bundle import ConfigParser

    from bundle.data import ensure_datalist, load_datalist
    from bundle.transforms.mri import check_acquisition

    parser = ConfigParser()
    parser.read_config(config)
    parser["bundle_root"] = bundle_root
    updates: dict = {"acceleration": acceleration, "mask_type": mask_type}
    if dataset_dir:
        updates["dataset_dir"] = dataset_dir
    if datalist:
        updates["datalist"] = datalist
    for kv in overrides:
        key, _, value = kv.partition("=")
        updates[key] = json.loads(value) if value[:1] in "[{0123456789-" or value in ("true", "false") else value
    parser.update(updates)
    check_acquisition([acceleration], mask_type)
    ds_dir, dl = parser.get_parsed_content("dataset_dir"), parser.get_parsed_content("datalist")
    ensure_datalist(dl, ds_dir)
    return parser, load_datalist(dl, ds_dir, split)


def add_report_arguments(ap, bundle_root: str) -> None:
    """The options the report scripts share: config, data, acquisition, checkpoint, output."""
    ap.add_argument("--config", default=os.path.join(bundle_root, "configs", "train.yaml"))
    ap.add_argument("--dataset-dir", help="default: the config's (the demo data)")
    ap.add_argument("--datalist", help="default: the config's (the demo datalist)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--acceleration", type=float, default=4)
    ap.add_argument("--mask-type", default="equispaced")
    ap.add_argument("--ckpt", default=os.path.join(bundle_root, "models", "model.pt"))
    ap.add_argument("--cs-iterations", type=int, default=50)
    ap.add_argument("--output-dir", default=os.path.join(bundle_root, "eval", "compare"))
    ap.add_argument("overrides", nargs="*", help="config overrides as key=value (e.g. features=[4,4,8,8,16,4])")


def run_report(run, args) -> int:
    """Run a report script's `run(args)`; bad input becomes one `error:` line and exit code 1."""
    import sys

    from bundle.errors import InputError

    try:
        return run(args)
    except (InputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def parse_weights(text: str, option: str) -> list[float]:
    """A comma-separated grid of regularisation weights (>= 0) from a command-line option."""
    from bundle.errors import InputError

    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise InputError(f"{option}: expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) < 0:
        raise InputError(f"{option}: weights must be >= 0, got {text!r}")
    return values


def shared_files(root: str, folder: str, names: Sequence[str]) -> list[str]:
    """The files `names` of `folder` (relative to the bundle root) that exist."""
    shared = os.path.join(root, folder)
    return [os.path.join(shared, n) for n in names if os.path.isfile(os.path.join(shared, n))]
