"""Speed and cost of the MRI pipeline, side by side with its references, in one run.

    python scripts/benchmark.py                       # this machine's default device
    python scripts/benchmark.py --device cuda --volume 256,256,200
    python scripts/benchmark.py --quick               # tiny sizes (the test suite runs this)
    python scripts/benchmark.py --sections volume --ct-volume 512,512,300   # one section only

Measures, on the same data (the demo subjects, or synthetic phantoms with --synthetic):
- the time to build the training set's slice cache: in memory (MONAI CacheDataset) and on disk
  (PersistentDataset, a first run that writes it and a later run that reads it); the time of the
  random slice transforms per training slice, without and with MONAI's metadata;
- training throughput (slices/s) of the bundle's pipeline (configs/train.yaml: MONAI
  SupervisedTrainer, its data pipeline and handlers) and of a plain PyTorch loop over the same
  dataset, network, loss and batch size (the MONAI reconstruction tutorial's style), in
  alternated rounds; ratio (best of each, each round's, and the 95% confidence interval of their
  mean);
- inference: network, zero-filled and compressed sensing (L1-wavelet FISTA, 50 iterations) on
  the same slices, slices/s and SSIM, ratio network / CS; CS again with --cs-sweep iteration
  counts (its speed / SSIM trade-off); seconds per 3D volume of --volume size for each of the
  three (the same simulation; the network with its data consistency) and the ratio network / CS
  per volume; with --ct-volume, a CT volume's 60-view scan simulation, and its reconstruction
  (FBP + network, then + data consistency) from the simulation and from the scan alone, and the
  build of the sparse system matrix that data consistency runs on (once per geometry);
- parameters and FLOPs per slice of each model variant; inference and training-step throughput of
  each variant against image size and batch size (plot); AMP on and off (CUDA) with its SSIM; peak
  memory (CUDA allocator, or the process' peak resident set on CPU).

Writes OUT/benchmark.csv, OUT/benchmark.md and (with the scaling section) OUT/benchmark_scaling.png;
prints the table.
Timings skip warm-up iterations and synchronise CUDA before reading the clock.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bundle.io import write_text_atomic  # noqa: E402
from bundle.networks import VARIANTS, ResidualUNet  # noqa: E402

SECTIONS = ("model", "data", "training", "inference", "volume", "scaling")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def flops_per_slice(net: torch.nn.Module, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 1, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.cpu()(x)
    return float(counter.get_total_flops())


def train_parser(args, device: torch.device):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(ROOT, "configs", "train.yaml"))
    parser["bundle_root"] = ROOT
    parser.update({
        "device": f"$torch.device('{device}')", "amp": False, "batch_size": args.batch, "patch_size": [args.patch] * 2,
        "epoch_length": args.iterations, "max_epochs": 1, "val_interval": 10**6, "features": list(args.features),
        "num_workers": args.workers, "output_dir": os.path.join(args.out_dir, "tb"), "train#dataset#progress": False,
    })
    if args.synthetic:
        parser.update({"dataset_dir": args.synthetic, "datalist": os.path.join(args.synthetic, "datalist.json")})
    from bundle.data import ensure_datalist

    ensure_datalist(parser.get_parsed_content("datalist"), parser.get_parsed_content("dataset_dir"))
    return parser


def time_bundle_training(parser, warmup: int, device: torch.device) -> tuple[float, int]:
    """slices/s of `train#trainer.run()` after `warmup` iterations, and the slices timed."""
    from ignite.engine import Events

    trainer = parser.get_parsed_content("train#trainer")
    stamps: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: (sync(device), stamps.append(time.perf_counter())))
    trainer.run()
    timed = len(stamps) - 1 - warmup
    batch = parser.get_parsed_content("batch_size")
    return timed * batch / (stamps[-1] - stamps[warmup]), timed * batch


def time_reference_training(parser, warmup: int, iterations: int, device: torch.device) -> float:
    """The same dataset, network, loss, optimiser and batch size in a plain PyTorch loop."""
    dataset = parser.get_parsed_content("train#dataset")
    loader = torch.utils.data.DataLoader(dataset, batch_size=parser.get_parsed_content("batch_size"), shuffle=True,
                                         num_workers=parser.get_parsed_content("num_workers"))
    net = ResidualUNet(features=parser.get_parsed_content("features")).to(device).train()
    loss_fn = parser.get_parsed_content("loss")
    opt = torch.optim.Adam(net.parameters(), lr=parser.get_parsed_content("learning_rate"))
    stamps, n = [], 0
    while n < iterations:
        for batch in loader:
            image, label = batch["image"].to(device), batch["label"].to(device)
            kspace, mask = batch["kspace"].to(device), batch["mask"].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(image, kspace=kspace, mask=mask), label)
            loss.backward()
            opt.step()
            sync(device)
            stamps.append(time.perf_counter())
            n += 1
            if n >= iterations:
                break
    return (len(stamps) - 1 - warmup) * loader.batch_size / (stamps[-1] - stamps[warmup])


def test_slices(parser, max_slices: int):
    from bundle.comparison import volume_slices
    from bundle.data import load_datalist

    items = load_datalist(parser.get_parsed_content("datalist"), parser.get_parsed_content("dataset_dir"), "test")
    name, vmax, sl = next(volume_slices(parser, items[:1], "loading test slices"))
    return {k: v[:max_slices] for k, v in sl.items()}, vmax


def time_method(fn, sl, batch: int, device: torch.device, repeats: int = 2) -> tuple[float, torch.Tensor]:
    fn(sl["image"][:batch], sl["kspace"][:batch], sl["mask"][:batch])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        outs = [fn(sl["image"][i:i + batch], sl["kspace"][i:i + batch], sl["mask"][i:i + batch])
                for i in range(0, len(sl["image"]), batch)]
        sync(device)
        best = min(best, time.perf_counter() - t0)
        out = torch.cat([o.float().cpu() for o in outs])
    return len(sl["image"]) / best, out


def ssim_of(pred: torch.Tensor, ref: torch.Tensor, vmax: float) -> float:
    from bundle.metrics import ssim_fastmri

    return float(ssim_fastmri(pred, ref, data_range=vmax).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "eval", "benchmark"))
    p.add_argument("--ckpt", default=os.path.join(ROOT, "models", "model.pt"))
    p.add_argument("--batch", type=int, default=8, help="training batch (both pipelines)")
    p.add_argument("--patch", type=int, default=128, help="training patch size")
    p.add_argument("--iterations", type=int, default=60, help="training iterations timed per pipeline (+ warm-up)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2, help="alternated timing rounds of the two training pipelines "
                   "(the table gives the best of each, and each round's ratio)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--infer-batch", type=int, default=16)
    p.add_argument("--slices", type=int, default=48, help="test slices for the inference comparison")
    p.add_argument("--cs-lambda", type=float, default=3e-4, help="CS weight (the validation-tuned 4x value)")
    p.add_argument("--cs-iterations", type=int, default=50)
    p.add_argument("--cs-sweep", default="10,25,100",
                   help="further CS iteration counts timed on the same slices (empty: none)")
    p.add_argument("--volume", default="256,256,200", help="X,Y,Z of the 3D volume timed end to end")
    p.add_argument("--ct-volume", default="", help="X,Y,Z of a CT volume timed end to end (e.g. 512,512,300)")
    p.add_argument("--sizes", default="64,128,256,384")
    p.add_argument("--batches", default="1,4,16,32")
    p.add_argument("--synthetic", help="a folder with a datalist (training, test) of phantoms instead of the demo data")
    p.add_argument("--quick", action="store_true", help="tiny sizes and counts (a smoke run)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    args = p.parse_args(argv)
    sections = [v.strip() for v in args.sections.split(",") if v.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        p.error(f"unknown --sections {','.join(unknown) or repr(args.sections)}: expected some of {','.join(SECTIONS)}")
    if args.quick:
        args.iterations, args.warmup, args.slices, args.cs_iterations, args.rounds = 4, 1, 4, 3, 1
        args.cs_sweep = "2" if args.cs_sweep else ""
        args.volume, args.sizes, args.batches, args.patch, args.batch = "32,32,4", "32,64", "1,2", 32, 2
        args.ct_volume = "32,32,2" if args.ct_volume else ""
    if args.rounds < 1 or args.iterations <= args.warmup + 1:
        p.error("--rounds must be at least 1 and --iterations larger than --warmup + 1")
    try:
        args.cs_sweep = [int(v) for v in args.cs_sweep.split(",") if v.strip()]
    except ValueError:
        p.error(f"--cs-sweep must be comma-separated iteration counts, got {args.cs_sweep!r}")
    if any(v < 1 for v in args.cs_sweep) or args.cs_iterations < 1:
        p.error("CS iteration counts (--cs-iterations, --cs-sweep) must be at least 1")
    args.features = VARIANTS["standard"]
    device = torch.device(args.device)
    os.makedirs(args.out_dir, exist_ok=True)
    rows: list[list] = []

    def add(section, name, value, unit):
        rows.append([section, name, f"{value:.6g}" if isinstance(value, float) else value, unit, device_name(device)])
        print(f"{section:>10} | {name:<48} | {value if not isinstance(value, float) else f'{value:.4g}'} {unit}")

    # the demo training config: the data and inference sections read their slices through it
    parser = train_parser(args, device) if {"data", "inference"} & set(sections) else None
    if "model" in sections:
        _model_rows(add)
    if "data" in sections:
        _data_rows(add, args, parser)
    if "training" in sections:
        _training_rows(add, args, device)
    if "inference" in sections:
        _inference_rows(add, args, parser, device)
    if "volume" in sections:
        _volume_rows(add, args, device)
    scaling = {"size": [], "batch": [], "train_size": [], "train_batch": []}
    if "scaling" in sections:
        _scaling_rows(add, args, device, scaling)
    _write(args.out_dir, rows, scaling, device)
    return 0


def _model_rows(add) -> None:
    """Size and cost of each model variant."""
    for variant, feats in VARIANTS.items():
        net = ResidualUNet(features=feats)
        add("model", f"{variant} parameters", float(sum(p.numel() for p in net.parameters())), "")
        for size in (128, 256):
            add("model", f"{variant} GFLOPs per {size}x{size} slice", flops_per_slice(net, size) / 1e9, "GFLOP")


def _data_rows(add, args, parser) -> None:
    """Building the training set's slice cache (MONAI CacheDataset / PersistentDataset)."""
    import shutil
    import tempfile

    from bundle.data import SliceDataset, load_datalist

    items = load_datalist(parser.get_parsed_content("datalist"), parser.get_parsed_content("dataset_dir"), "training")
    items = items[:2] if args.quick else items
    volume_transform = parser.get_parsed_content("volume_transforms")
    cache_dir = tempfile.mkdtemp(prefix="slice_cache_")
    try:
        for what, kwargs in [("in memory (CacheDataset), 1 thread", {"num_workers": 1}),
                             ("in memory (CacheDataset), 2 threads", {"num_workers": 2}),
                             ("on disk (PersistentDataset), first run: writes the cache", {"cache_dir": cache_dir}),
                             ("on disk (PersistentDataset), next run: reads the cache", {"cache_dir": cache_dir})]:
            t0 = time.perf_counter()
            ds = SliceDataset(items, volume_transform, progress=False, **kwargs)
            add("data", f"training set ({len(items)} volumes, {len(ds)} slices) cached {what}",
                time.perf_counter() - t0, "s")
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    # the random slice transforms (augmentation, undersampling) as a DataLoader worker runs them (one
    # thread), without MONAI's metadata as the bundle does since 0.6.0, then with it as before
    from monai.data import get_track_meta

    ds = parser.get_parsed_content("train#dataset")
    n = min(len(ds), 8 if args.quick else 300)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for label, call in (("without MONAI metadata (the bundle)", lambda i: ds[i]),
                            ("with MONAI metadata tracked", lambda i: ds.slice_transform(dict(ds.items[i])))):
            assert get_track_meta()  # on outside the dataset: the second row tracks it
            call(0)
            t0 = time.perf_counter()
            for i in range(n):
                call(i)
            add("data", f"random slice transforms per training slice, {label}, 1 thread",
                (time.perf_counter() - t0) / n * 1000, "ms")
    finally:
        torch.set_num_threads(threads)


def _training_rows(add, args, device) -> None:
    """The bundle pipeline against the plain loop, same work, in alternated rounds (best of each: the
    machine's own drift hits both) and each round's ratio."""
    bundle_rates, ref_rates = [], []
    for _ in range(args.rounds):
        parser = train_parser(args, device)
        reset_peak(device)
        bundle_rates.append(time_bundle_training(parser, args.warmup, device)[0])
        bundle_mem = peak_memory_mb(device)
        parser = train_parser(args, device)
        ref_rates.append(time_reference_training(parser, args.warmup, args.iterations + args.warmup + 1, device))
    bundle_rate, ref_rate = max(bundle_rates), max(ref_rates)
    add("training", f"bundle pipeline (SupervisedTrainer + handlers), batch {args.batch} of {args.patch}x{args.patch}",
        bundle_rate, "slices/s")
    add("training", "bundle pipeline peak memory", bundle_mem, "MiB")
    add("training", "plain PyTorch loop (same data, net, loss, batch)", ref_rate, "slices/s")
    add("training", "ratio bundle / plain loop", bundle_rate / ref_rate, "x")
    paired = [b / r for b, r in zip(bundle_rates, ref_rates)]  # each round's pair ran back to back
    add("training", "ratio bundle / plain loop, each round: " + " ".join(f"{v:.3f}" for v in paired),
        float(np.mean(paired)), "x (mean)")
    if len(paired) > 1:  # is the difference beyond the machine's spread? (Student t over the rounds)
        from bundle.comparison import summarize

        ci = summarize(paired)
        add("training", "ratio bundle / plain loop, 95% CI of the mean over rounds: low", ci["ci_low"], "x")
        add("training", "ratio bundle / plain loop, 95% CI of the mean over rounds: high", ci["ci_high"], "x")


def _trained_net(args) -> ResidualUNet:
    from bundle.networks import load_checkpoint

    net = ResidualUNet(features=args.features)
    if os.path.isfile(args.ckpt) and not args.quick:
        load_checkpoint(net, args.ckpt)
    return net


def _inference_rows(add, args, parser, device) -> None:
    """The network, zero-filled and CS on the same test slices."""
    from bundle.comparison import cs_method, network_method, zero_filled_method

    sl, vmax = test_slices(parser, args.slices)
    net = _trained_net(args)
    methods = {"network": network_method(net, True, device), "zero_filled": zero_filled_method()}

    def on_device(fn):
        return lambda image, kspace, mask: fn(image.to(device), kspace.to(device), mask.to(device))

    methods["compressed_sensing"] = on_device(cs_method(args.cs_lambda, args.cs_iterations))
    rates, ssims = {}, {}
    for name, fn in methods.items():
        reset_peak(device)
        rates[name], out = time_method(fn, sl, args.infer_batch, device)
        ssims[name] = ssim_of(out, sl["label"], vmax)
        add("inference", f"{name} ({sl['image'].shape[-2]}x{sl['image'].shape[-1]}, batch {args.infer_batch})",
            rates[name], "slices/s")
        add("inference", f"{name} SSIM (same slices)", ssims[name], "")
        add("inference", f"{name} peak memory", peak_memory_mb(device), "MiB")
    add("inference", "ratio network / compressed sensing (speed)", rates["network"] / rates["compressed_sensing"], "x")
    add("inference", "SSIM network - compressed sensing", ssims["network"] - ssims["compressed_sensing"], "")
    for iterations in args.cs_sweep:  # CS's own speed / quality trade-off on the same slices
        rate, out = time_method(on_device(cs_method(args.cs_lambda, iterations)), sl, args.infer_batch, device)
        add("inference", f"compressed_sensing, {iterations} iterations", rate, "slices/s")
        add("inference", f"compressed_sensing, {iterations} iterations, SSIM", ssim_of(out, sl["label"], vmax), "")

    if device.type == "cuda":  # AMP: speed and SSIM on the same slices
        amp_net = network_method(net, True, device)

        def amp_fn(image, kspace, mask):
            with torch.autocast("cuda"):
                return amp_net(image, kspace, mask)

        amp_rate, amp_out = time_method(amp_fn, sl, args.infer_batch, device)
        add("inference", "network with AMP", amp_rate, "slices/s")
        add("inference", "SSIM AMP - full precision", ssim_of(amp_out, sl["label"], vmax) - ssims["network"], "")


def _volume_rows(add, args, device) -> None:
    """Whole 3D volumes end to end: MRI (simulation, network, data consistency; zero-filled and CS
    through the same simulation), CT (scan, FBP, network)."""
    from bundle.inference import VolumeReconstructor

    net = _trained_net(args)
    shape = tuple(int(v) for v in args.volume.split(","))
    rng = np.random.default_rng(0)
    volume = rng.random(shape, dtype=np.float32) + np.linspace(0, 1, shape[0], dtype=np.float32)[:, None, None]
    name = "x".join(map(str, shape))

    def volume_seconds(model: torch.nn.Module, amp: bool = False) -> float:
        rec = VolumeReconstructor(model, batch_size=args.infer_batch * 2, device=device, amp=amp, progress=False)
        rec.reconstruct(volume[:, :, : min(4, shape[2])], "warmup")
        reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        rec.reconstruct(volume, "volume")
        sync(device)
        return time.perf_counter() - t0

    seconds = {"network": volume_seconds(net)}
    add("volume", f"{name} MRI volume", seconds["network"], "s")
    add("volume", "peak memory", peak_memory_mb(device), "MiB")
    if device.type == "cuda":
        add("volume", f"{name} MRI volume (AMP)", volume_seconds(net, amp=True), "s")
        add("volume", "peak memory (AMP)", peak_memory_mb(device), "MiB")
    # the baselines through the same simulation, batching and device: whole-volume seconds side by side
    from bundle.comparison import cs_method, zero_filled_method

    cs = f"compressed sensing ({args.cs_iterations} iterations)"
    for method, fn in (("zero-filled", zero_filled_method()), (cs, cs_method(args.cs_lambda, args.cs_iterations))):
        seconds[method] = volume_seconds(_MethodModule(fn).to(device))
        add("volume", f"{name} MRI volume, {method}", seconds[method], "s")
    add("volume", "ratio network / compressed sensing per MRI volume (speed)", seconds[cs] / seconds["network"], "x")

    if args.ct_volume:  # CT: simulated 60-view scan, FBP and network, slice by slice
        from bundle.ct_inference import CTVolumeReconstructor
        from bundle.ct_transforms import CTAcquisition, CTDataConsistency, hu_to_unit

        shape = tuple(int(v) for v in args.ct_volume.split(","))
        amp = device.type == "cuda"  # configs/inference_ct.yaml's default
        label = f"{'x'.join(map(str, shape))} CT volume, 60 views{' (AMP)' if amp else ''}"
        ct_net = ResidualUNet(features=args.features, norm=None, data_consistency=False).to(device)
        hu = (rng.random(shape, dtype=np.float32) * 2000 - 1000).astype(np.float32)
        acq = CTAcquisition(views=60)
        spacing = (0.8, 0.8, 1.0)
        # the scan alone (what a scanner measures), then reconstructions from it: what a user with
        # a measured sinogram runs, without the simulation
        unit = hu_to_unit(torch.from_numpy(np.ascontiguousarray(np.moveaxis(hu, 2, 0))))
        acq.sinogram(unit[:4].to(device), spacing[:2])  # warm-up
        sync(device)
        t0 = time.perf_counter()
        sinogram = torch.cat([acq.sinogram(unit[i:i + 32].to(device), spacing[:2])[0].cpu()
                              for i in range(0, len(unit), 32)])
        sync(device)
        add("volume", f"{label}: scan simulation alone", time.perf_counter() - t0, "s")
        for dc in (None, CTDataConsistency(acq)):  # the network alone, then with the bundle's default consistency
            what = "network" if dc is None else f"network + data consistency ({dc.iterations} CG iterations)"
            peak = 0.0
            for given in (False, True):
                rec = CTVolumeReconstructor(ct_net, acq, batch_size=32, device=device, amp=amp, progress=False,
                                            consistency=dc)
                rec.spacing = spacing
                rec.reconstruct(hu[:, :, :4], "warmup")
                if given:
                    rec.sinograms["ct"] = sinogram
                reset_peak(device)
                sync(device)
                t0 = time.perf_counter()
                rec.reconstruct(hu, "ct")
                sync(device)
                how = f"from its scan (FBP + {what})" if given else f"(scan simulation + FBP + {what})"
                add("volume", f"{label} {how}", time.perf_counter() - t0, "s")
                peak = max(peak, peak_memory_mb(device))
            add("volume", f"CT peak memory ({'no DC' if dc is None else 'DC'})", peak, "MiB")
        # data consistency runs on the sparse system matrix of the geometry, built once (in the
        # warm-up above, as the sampling grids); its own cost, which a single volume pays once:
        from bundle.ct_physics import SystemMatrix

        sync(device)
        t0 = time.perf_counter()
        matrix = SystemMatrix(acq.geometry(shape[:2], spacing[:2]), device)
        sync(device)
        add("volume", f"{label}: system matrix for data consistency, built once per geometry",
            time.perf_counter() - t0, "s")
        add("volume", "system matrix and its transpose", matrix.matrix._nnz() * 16 / 2**20, "MiB")


class _MethodModule(torch.nn.Module):
    """A baseline (image, kspace, mask) -> image as the module VolumeReconstructor runs; the empty
    parameter only tells it the device."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, image, kspace, mask):
        return self.fn(image, kspace, mask)


def _scaling_rows(add, args, device, scaling: dict) -> None:
    """Throughput against image size and batch size, both variants, inference and training step."""
    for variant in VARIANTS:
        vnet = ResidualUNet(features=VARIANTS[variant]).to(device).eval()
        for size in (int(s) for s in args.sizes.split(",")):
            x = torch.rand(8, 1, size, size, device=device)
            rate = _throughput(lambda: vnet(x), 8, device)
            scaling["size"].append((variant, size, rate))
            add("scaling", f"{variant} inference {size}x{size} batch 8", rate, "slices/s")
        for b in (int(s) for s in args.batches.split(",")):
            x = torch.rand(b, 1, 128, 128, device=device)
            rate = _throughput(lambda: vnet(x), b, device)
            scaling["batch"].append((variant, b, rate))
            add("scaling", f"{variant} inference 128x128 batch {b}", rate, "slices/s")
        vnet.train()
        opt = torch.optim.Adam(vnet.parameters())

        def train_rate(b: int, size: int) -> float:
            x = torch.rand(b, 1, size, size, device=device)

            def step():
                opt.zero_grad()
                vnet(x).abs().mean().backward()
                opt.step()

            return _throughput(step, b, device)

        for size in (int(s) for s in args.sizes.split(",")):
            rate = train_rate(8, size)
            scaling["train_size"].append((variant, size, rate))
            add("scaling", f"{variant} training step {size}x{size} batch 8 (model only)", rate, "slices/s")
        for b in (int(s) for s in args.batches.split(",")):
            rate = train_rate(b, 128)
            scaling["train_batch"].append((variant, b, rate))
            add("scaling", f"{variant} training step 128x128 batch {b} (model only)", rate, "slices/s")


def _throughput(fn, batch: int, device: torch.device, seconds: float = 0.5) -> float:
    fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        fn()
        n += 1
        sync(device)
    return n * batch / (time.perf_counter() - t0)


def _write(out_dir: str, rows: list[list], scaling: dict, device: torch.device) -> None:
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows([["section", "name", "value", "unit", "device"], *rows])
    write_text_atomic(os.path.join(out_dir, "benchmark.csv"), buf.getvalue())
    md = [f"Device: {device_name(device)}", "", "| section | measure | value | unit |", "|---|---|---|---|"]
    md += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |" for r in rows]
    write_text_atomic(os.path.join(out_dir, "benchmark.md"), "\n".join(md) + "\n")
    if not scaling["size"]:
        print(f"wrote {out_dir}/benchmark.csv, benchmark.md")
        return

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bundle.figures import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for variant, color in zip(VARIANTS, ("C0", "C1")):
        for what, style in (("", "o-"), ("train_", "s--")):
            label = f"{variant}, {'training step' if what else 'inference'}"
            pts = [(s, r) for v, s, r in scaling[what + "size"] if v == variant]
            axes[0].plot([s for s, _ in pts], [1000 / r for _, r in pts], style, color=color, label=label)
            pts = [(b, r) for v, b, r in scaling[what + "batch"] if v == variant]
            axes[1].plot([b for b, _ in pts], [r for _, r in pts], style, color=color, label=label)
    axes[0].set(xlabel="image size (pixels per side)", ylabel="ms per slice (batch 8)", title="cost against size",
                yscale="log")
    axes[1].set(xlabel="batch size", ylabel="slices / s (128 x 128)", title="throughput against batch")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Model alone (inference; training step: forward, backward, Adam), {device_name(device)}")
    fig.tight_layout()
    save_figure(fig, os.path.join(out_dir, "benchmark_scaling.png"))
    print(f"wrote {out_dir}/benchmark.csv, benchmark.md, benchmark_scaling.png")


if __name__ == "__main__":
    sys.exit(main())
