"""Running a network over the slices of a volume in batches: how many slices per call, and the one
loop that every reconstructor uses."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from bundle.errors import check_whole_number

# On the CPU the network runs fastest on a few slices per call: oneDNN's convolutions over many
# pixels with few channels spill the caches (measured in docs/benchmarks.md). Accelerators take the
# whole batch in one call.
CPU_BATCH_PIXELS = 2**17


def slices_per_call(batch_size: int, height: int, width: int, device: str | torch.device,
                    max_pixels: int = CPU_BATCH_PIXELS) -> int:
    """Slices per network call: `batch_size` on accelerators; on the CPU as many as fit in
    `max_pixels` pixels (at least 1, at most `batch_size`)."""
    if torch.device(device).type != "cpu":
        return max(1, int(batch_size))
    return max(1, min(int(batch_size), int(max_pixels) // max(1, height * width)))


def check_cpu_batch_pixels(value: int) -> int:
    """`value` if it is a usable `cpu_batch_pixels` (a whole number >= 1), else an `InputError`."""
    return check_whole_number(value, "cpu_batch_pixels must be a whole number of pixels >= 1")


def in_batches(run: Callable[[slice], torch.Tensor | Mapping[str, torch.Tensor]], total: int, step: int):
    """`run(slice(start, stop))` on consecutive batches of `step` of `total` slices, the results
    concatenated along the first dimension (a tensor, or a dict of tensors)."""
    parts: list[Any] = [run(slice(start, min(start + step, total))) for start in range(0, total, step)]
    if parts and isinstance(parts[0], Mapping):
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    return torch.cat(parts)


def forward(network: torch.nn.Module, image: torch.Tensor, amp: bool, **inputs: torch.Tensor) -> torch.Tensor:
    """The network on `image` (and keyword inputs), under autocast when `amp` (CUDA), as float32."""
    with torch.autocast(image.device.type, enabled=amp):
        return network(image, **inputs).float()
