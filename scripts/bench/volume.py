"""Whole 3D volumes end to end: MRI (network, zero-filled, CS) and CT (scan, FBP, network, data consistency)."""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.common import (
    MethodModule, peak_memory_mb, reset_peak, sync, trained_net,
)
from bundle.networks import ResidualUNet


def rows(add, args, device) -> None:
    """Whole 3D volumes end to end: MRI (simulation, network, data consistency; zero-filled and CS
    through the same simulation), CT (scan, FBP, network)."""
    from bundle.inference import MRIReconstructor

    net = trained_net(args)
    shape = tuple(int(v) for v in args.volume.split(","))
    rng = np.random.default_rng(0)
    volume = rng.random(shape, dtype=np.float32) + np.linspace(0, 1, shape[0], dtype=np.float32)[:, None, None]
    name = "x".join(map(str, shape))

    def volume_seconds(model: torch.nn.Module, amp: bool = False) -> float:
        rec = MRIReconstructor(model, batch_size=args.infer_batch * 2, device=device, amp=amp)
        rec.reconstruct(volume[:, :, : min(4, shape[2])], None, "warmup")
        reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        rec.reconstruct(volume, None, "volume")
        sync(device)
        return time.perf_counter() - t0

    seconds = {"network": volume_seconds(net)}
    add("volume", f"{name} MRI volume", seconds["network"], "s")
    add("volume", "peak memory", peak_memory_mb(device), "MiB")
    if device.type == "cuda":
        add("volume", f"{name} MRI volume (AMP)", volume_seconds(net, amp=True), "s")
        add("volume", "peak memory (AMP)", peak_memory_mb(device), "MiB")
    # the baselines through the same simulation, batching and device: whole-volume seconds side by side
    from bundle.reporting.comparison import cs_method, zero_filled_method

    cs = f"compressed sensing ({args.cs_iterations} iterations)"
    for method, fn in (("zero-filled", zero_filled_method()), (cs, cs_method(args.cs_lambda, args.cs_iterations))):
        seconds[method] = volume_seconds(MethodModule(fn).to(device))
        add("volume", f"{name} MRI volume, {method}", seconds[method], "s")
    add("volume", "ratio network / compressed sensing per MRI volume (speed)", seconds[cs] / seconds["network"], "x")

    if args.ct_volume:  # CT: simulated 60-view scan, FBP and network, slice by slice
        from bundle.inference import CTReconstructor
        from bundle.transforms.ct import CTAcquisition, CTDataConsistency, hu_to_unit

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
                rec = CTReconstructor(ct_net, acq, batch_size=32, device=device, amp=amp, progress=False,
                                      consistency=dc)
                rec.reconstruct(hu[:, :, :4], spacing, "warmup")
                reset_peak(device)
                sync(device)
                t0 = time.perf_counter()
                rec.reconstruct(hu, spacing, "ct", sinogram=sinogram if given else None)
                sync(device)
                how = f"from its scan (FBP + {what})" if given else f"(scan simulation + FBP + {what})"
                add("volume", f"{label} {how}", time.perf_counter() - t0, "s")
                peak = max(peak, peak_memory_mb(device))
            add("volume", f"CT peak memory ({'no DC' if dc is None else 'DC'})", peak, "MiB")
        # data consistency runs on the sparse system matrix of the geometry, built once (in the
        # warm-up above, as the sampling grids); its own cost, which a single volume pays once:
        from bundle.physics.ct import ParallelBeamProjector
        from bundle.physics.ct_matrix import SystemMatrix

        sync(device)
        t0 = time.perf_counter()
        matrix = SystemMatrix(ParallelBeamProjector(acq.geometry(shape[:2], spacing[:2])), device)
        sync(device)
        add("volume", f"{label}: system matrix for data consistency, built once per geometry",
            time.perf_counter() - t0, "s")
        add("volume", "system matrix and its transpose", matrix.matrix._nnz() * 16 / 2**20, "MiB")
