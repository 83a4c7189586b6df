"""Throughput against image size and batch size, both variants, inference and training step; the report."""

from __future__ import annotations


import torch

from bench.common import (
    device_name, throughput,
)
from bundle.networks import VARIANTS, ResidualUNet
import csv
import os

from bundle.data.io import write_text_atomic


def rows(add, args, device, scaling: dict) -> None:
    """Throughput against image size and batch size, both variants, inference and training step."""
    for variant in VARIANTS:
        vnet = ResidualUNet(features=VARIANTS[variant]).to(device).eval()
        for size in (int(s) for s in args.sizes.split(",")):
            x = torch.rand(8, 1, size, size, device=device)
            rate = throughput(lambda: vnet(x), 8, device)
            scaling["size"].append((variant, size, rate))
            add("scaling", f"{variant} inference {size}x{size} batch 8", rate, "slices/s")
        for b in (int(s) for s in args.batches.split(",")):
            x = torch.rand(b, 1, 128, 128, device=device)
            rate = throughput(lambda: vnet(x), b, device)
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

            return throughput(step, b, device)

        for size in (int(s) for s in args.sizes.split(",")):
            rate = train_rate(8, size)
            scaling["train_size"].append((variant, size, rate))
            add("scaling", f"{variant} training step {size}x{size} batch 8 (model only)", rate, "slices/s")
        for b in (int(s) for s in args.batches.split(",")):
            rate = train_rate(b, 128)
            scaling["train_batch"].append((variant, b, rate))
            add("scaling", f"{variant} training step 128x128 batch {b} (model only)", rate, "slices/s")


def write_report(out_dir: str, rows: list[list], scaling: dict, device: torch.device) -> None:
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

    from bundle.reporting.figures import save_figure

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
