"""Multi-coil raw k-space through the inference path: seconds per slice of the shipped
reconstruction (ESPIRiT, network, PICS average) beside the network alone and the classical
methods, on the same synthetic scan (birdcage coils on a textured head-like phantom, 4x
equispaced, fastMRI centre), and the peak memory."""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.common import ROOT, peak_memory_mb, reset_peak, sync


def synthetic_scan(height: int, width: int, coils: int, slices: int):
    """Fully sampled coil k-space (S, C, H, W) of a textured ellipse under birdcage coils."""
    from bundle.data.rawkspace import RawKspace
    from bundle.physics.mri import fft2c
    from bundle.physics.mri_sense import birdcage_maps

    rng = np.random.default_rng(0)
    y, x = np.mgrid[-1:1:height * 1j, -1:1:width * 1j]
    head = ((x / 0.8) ** 2 + (y / 0.9) ** 2 < 1).astype(np.float32)
    maps = birdcage_maps(coils, (height, width))
    k = []
    for _ in range(slices):
        image = head * (1 + 0.3 * rng.random((height, width), dtype=np.float32))
        k.append(fft2c(maps * torch.from_numpy(image).to(torch.complex64)).numpy())
    return RawKspace("synthetic", "fastmri", np.stack(k).astype(np.complex64), None, None)


def rows(add, args, device) -> None:
    import os

    from bundle.inference import MultiCoilReconstructor
    from bundle.networks import load_checkpoint
    from bundle.parallel_imaging import PICS_REGION
    from bundle.varnet import VarNet, varnet_variant

    h, w, c = (int(v) for v in args.multicoil_slice.split(","))
    raw = synthetic_scan(h, w, c, args.multicoil_slices)
    net = load_checkpoint(VarNet(**varnet_variant("cpu")), os.path.join(ROOT, "models", "model_multicoil.pt")).to(device)
    label = f"{h}x{w}, {c} coils, 4x"
    shipped_name = f"shipped (0.23): PICS joined with the network on the {PICS_REGION} (4x), 30 iterations, window maps"
    methods = {
        "zero-filled RSS": dict(method="zero_filled"),
        "CG-SENSE (ESPIRiT maps, weight 0.1)": dict(method="cg_sense", weight=0.1),
        "PICS (ESPIRiT maps, weight 0.01)": dict(method="pics", weight=0.01),
        "network alone (ESPIRiT maps)": dict(method="varnet", pics_blend=0.0),
        f"0.15: 0.6 network + 0.4 PICS on the {PICS_REGION}": dict(method="varnet", pics_blend="auto", pics_mode="average"),
        "0.17-0.18: the same joint, 100 iterations after 30 power iterations": dict(
            method="varnet", pics_blend="auto", pics_mode="auto", solver="0.18"),
        "0.19-0.22: the same with SigPy's square calibration": dict(
            method="varnet", pics_blend="auto", pics_mode="auto", espirit_calibration="square"),
        shipped_name: dict(method="varnet", pics_blend="auto", pics_mode="auto"),
    }
    seconds = {}
    for name, options in methods.items():
        rec = MultiCoilReconstructor(net, acceleration=4, device=device, progress=False, **options)
        mask = rec.check(raw, "synthetic")["mask"]
        first = type(raw)(raw.path, raw.format, raw.kspace[:1], None, None)
        rec.reconstruct_raw(first, "warmup", mask)  # numba's and the allocator's first call
        reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        rec.reconstruct_raw(raw, "synthetic", mask)
        sync(device)
        seconds[name] = (time.perf_counter() - t0) / raw.kspace.shape[0]
        add("multicoil", f"{label}: {name}", seconds[name], "s/slice")
    # on the CPU the process' peak resident set (it never resets): the largest of the methods
    add("multicoil", f"{label}: peak memory", peak_memory_mb(device), "MiB")
    shipped = seconds[shipped_name]
    add("multicoil", "ratio shipped / PICS per slice (time)", shipped / seconds["PICS (ESPIRiT maps, weight 0.01)"], "x")
    add("multicoil", "ratio shipped / network alone per slice (time)", shipped / seconds["network alone (ESPIRiT maps)"], "x")
    add("multicoil", "ratio shipped / 0.19-0.22 (square maps) per slice (time)",
        shipped / seconds["0.19-0.22: the same with SigPy's square calibration"], "x")
    add("multicoil", "ratio shipped / 0.17-0.18 solver per slice (time)",
        shipped / seconds["0.17-0.18: the same joint, 100 iterations after 30 power iterations"], "x")
