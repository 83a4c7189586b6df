"""What every benchmark section shares: device timing and memory, the demo training config, the
trained model, the test slices and the throughput loop."""

from __future__ import annotations

import os
import platform
import resource
import time

import torch

from bundle.networks import ResidualUNet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def test_slices(parser, max_slices: int):
    from bundle.reporting.comparison import volume_slices
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


def trained_net(args) -> ResidualUNet:
    from bundle.networks import load_checkpoint

    net = ResidualUNet(features=args.features)
    if os.path.isfile(args.ckpt) and not args.quick:
        load_checkpoint(net, args.ckpt)
    return net


def throughput(fn, batch: int, device: torch.device, seconds: float = 0.5) -> float:
    fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        fn()
        n += 1
        sync(device)
    return n * batch / (time.perf_counter() - t0)


class MethodModule(torch.nn.Module):
    """A baseline (image, kspace, mask) -> image as the module MRIReconstructor runs; the empty
    parameter only tells it the device."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, image, kspace, mask):
        return self.fn(image, kspace, mask)
