"""Network, zero-filled and compressed sensing on the same test slices: speed and SSIM."""

from __future__ import annotations


import torch

from bench.common import (
    peak_memory_mb, reset_peak, ssim_of, test_slices,
    time_method, trained_net,
)


def rows(add, args, parser, device) -> None:
    """The network, zero-filled and CS on the same test slices."""
    from bundle.reporting.comparison import cs_method, network_method, zero_filled_method

    sl, vmax = test_slices(parser, args.slices)
    net = trained_net(args)
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
