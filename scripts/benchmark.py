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
- multi-coil raw k-space (--multicoil-slice H,W,coils, default fastMRI brain's 640 x 320 x 16):
  seconds per slice through the inference path of zero-filled RSS, CG-SENSE, PICS, the network
  alone and the shipped network + PICS average, and the ratios shipped / PICS and shipped / network;
- parameters and FLOPs per slice of each model variant; inference and training-step throughput of
  each variant against image size and batch size (plot); AMP on and off (CUDA) with its SSIM; peak
  memory (CUDA allocator, or the process' peak resident set on CPU).

Writes OUT/benchmark.csv, OUT/benchmark.md and (with the scaling section) OUT/benchmark_scaling.png;
prints the table.
Timings skip warm-up iterations and synchronise CUDA before reading the clock.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import data, inference, model, multicoil, scaling, training, volume  # noqa: E402
from bench.common import device_name, train_parser  # noqa: E402
from bundle.networks import VARIANTS  # noqa: E402

SECTIONS = ("model", "data", "training", "inference", "volume", "multicoil", "scaling")


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
    p.add_argument("--multicoil-slice", default="640,320,16", help="H,W,coils of the multi-coil scan timed")
    p.add_argument("--multicoil-slices", type=int, default=2, help="slices of that scan timed (after one warm-up)")
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
        args.multicoil_slice, args.multicoil_slices = "32,32,4", 1
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
        model.rows(add)
    if "data" in sections:
        data.rows(add, args, parser)
    if "training" in sections:
        training.rows(add, args, device)
    if "inference" in sections:
        inference.rows(add, args, parser, device)
    if "volume" in sections:
        volume.rows(add, args, device)
    if "multicoil" in sections:
        multicoil.rows(add, args, device)
    curves: dict[str, list] = {"size": [], "batch": [], "train_size": [], "train_batch": []}
    if "scaling" in sections:
        scaling.rows(add, args, device, curves)
    scaling.write_report(args.out_dir, rows, curves, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
