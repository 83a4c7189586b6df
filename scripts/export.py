"""Export the shipped network to TorchScript (MONAI's `ckpt_export`) and ONNX, and check both
against the PyTorch model.

    python scripts/export.py                        # models/model.pt -> models/model.ts, models/model.onnx
    python scripts/export.py --config configs/inference_ct.yaml --ckpt models/model_ct.pt --name model_ct

TorchScript keeps the whole network, data-consistency step included (inputs image, kspace, mask).
ONNX holds the image-only path (B, 1, H, W) -> (B, 1, H, W), H and W multiples of 16, batch and
size dynamic: ONNX export of the complex FFTs of the data-consistency step is not supported, so
runtimes that need it apply data consistency themselves. Each export is run on random inputs and
compared with PyTorch (maximum absolute difference printed; the script fails above the tolerance).
Files are written beside their destination and renamed, so an interrupted export leaves no
truncated file.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bundle.data.io import atomic_output  # noqa: E402
from bundle.networks import load_checkpoint  # noqa: E402


def build_network(config: str, ckpt: str) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config)
    net = parser.get_parsed_content("network_def", instantiate=True)
    load_checkpoint(net, ckpt)
    return net.eval()


def export_torchscript(config: str, meta: str, ckpt: str, out: str) -> None:
    from monai.bundle import ckpt_export

    with atomic_output(out, ".ts") as tmp:
        ckpt_export(net_id="network_def", filepath=tmp, ckpt_file=ckpt, meta_file=meta, config_file=config)


def export_onnx(net: torch.nn.Module, out: str, size: int) -> None:
    example = torch.rand(1, 1, size, size)
    with atomic_output(out, ".onnx") as tmp:
        torch.onnx.export(
            net, (example,), tmp, input_names=["image"], output_names=["pred"], opset_version=17, dynamo=False,
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "pred": {0: "batch", 2: "height", 3: "width"}},
        )


def compare(net: torch.nn.Module, ts_path: str, onnx_path: str | None, sizes: list[int]) -> dict[str, float]:
    """Maximum absolute differences of the exports from PyTorch on random inputs of each size."""
    gen = torch.Generator().manual_seed(0)
    scripted = torch.jit.load(ts_path)
    diffs = {"torchscript": 0.0, "torchscript_dc": 0.0, "onnx": 0.0}
    session = None
    if onnx_path is not None:
        import onnxruntime as ort

        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        for size in sizes:
            x = torch.rand(2, 1, size, size, generator=gen)
            k = torch.randn(2, 2, size, size, generator=gen)
            m = (torch.rand(2, 1, 1, size, generator=gen) > 0.5).float()
            ref = net(x)
            diffs["torchscript"] = max(diffs["torchscript"], float((scripted(x) - ref).abs().max()))
            diffs["torchscript_dc"] = max(diffs["torchscript_dc"], float((scripted(x, k, m) - net(x, k, m)).abs().max()))
            if session is not None:
                out = session.run(None, {"image": x.numpy()})[0]
                diffs["onnx"] = max(diffs["onnx"], float(np.abs(out - ref.numpy()).max()))
    return diffs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/inference.yaml", help="config with network_def")
    p.add_argument("--meta", default="configs/metadata.json")
    p.add_argument("--ckpt", default="models/model.pt")
    p.add_argument("--out-dir", default="models")
    p.add_argument("--name", default="model", help="file stem: <name>.ts, <name>.onnx")
    p.add_argument("--size", type=int, default=128, help="ONNX example input size (multiple of 16)")
    p.add_argument("--no-onnx", action="store_true", help="TorchScript only")
    p.add_argument("--tolerance", type=float, default=1e-4)
    args = p.parse_args(argv)
    if args.size % 16:
        p.error("--size must be a multiple of 16")
    net = build_network(args.config, args.ckpt)
    ts_path = os.path.join(args.out_dir, f"{args.name}.ts")
    export_torchscript(args.config, args.meta, args.ckpt, ts_path)
    onnx_path = None
    if not args.no_onnx:
        onnx_path = os.path.join(args.out_dir, f"{args.name}.onnx")
        export_onnx(net, onnx_path, args.size)
    diffs = compare(net, ts_path, onnx_path, [args.size, args.size + 32])
    for key, value in diffs.items():
        print(f"{key}: max |export - pytorch| = {value:.3g}")
    worst = max(diffs.values())
    if worst > args.tolerance:
        print(f"error: an export differs from the PyTorch model by {worst:.3g} > {args.tolerance}", file=sys.stderr)
        return 1
    print(f"wrote {ts_path}" + (f" and {onnx_path}" if onnx_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
