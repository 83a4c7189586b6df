"""AMP-trained against fp32-trained MRI models: the standard training (configs/train.yaml) with
`--amp true` and with `--amp false` for each seed, every model evaluated in full precision
(`--amp false`) on the test split; prints SSIM and PSNR per seed, mean +- sd per arm, and the
difference with Welch's t-test, and writes them to OUT/amp_comparison.md.

    python scripts/compare_amp.py --seeds 0,1,2 --parallel 6 --out-dir eval/amp

Each run is the README's training / evaluation command with `--amp`, `--seed`, `--ckpt_dir` and
`--output_dir` added (logs in OUT/logs). On the CPU MONAI's trainer does not autocast, so both arms
train in full precision there: the comparison needs a GPU. Measured on one NVIDIA H100 (release
0.6.2, the demo data, seeds 0, 1, 2, six runs at once, about 3 min in all): 4x SSIM 0.8129 +- 0.0084
(AMP) against 0.8192 +- 0.0064 (fp32), t = -1.04, p = 0.36; 8x 0.7007 +- 0.0134 against 0.7110 +-
0.0082, t = -1.13, p = 0.33 (docs/README.md, "Speed, cost and dependable runs").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import stats

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)

from bundle.data.io import write_text_atomic  # noqa: E402

BUNDLE = [sys.executable, "-m", "monai.bundle", "run"]
META = ["--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]


def commands(amp: str, seed: int, out: str, args) -> tuple[list[str], list[str]]:
    """The training and evaluation commands of one (amp, seed) run."""
    ckpt = os.path.join(out, f"ckpt_{amp}_{seed}")
    train = [*BUNDLE, "training", *META, "--config_file", "configs/train.yaml", "--amp", amp, "--seed", str(seed),
             "--ckpt_dir", ckpt, "--output_dir", os.path.join(out, f"train_{amp}_{seed}"),
             "--num_workers", str(args.num_workers)]
    if args.max_epochs is not None:
        train += ["--max_epochs", str(args.max_epochs)]
    evaluate = [*BUNDLE, "evaluating", *META, "--config_file", "['configs/train.yaml','configs/evaluate.yaml']",
                "--amp", "false", "--ckpt_dir", ckpt, "--output_dir", os.path.join(out, f"eval_{amp}_{seed}")]
    return train, evaluate


def run_one(job: tuple[str, int], out: str, args) -> str | None:
    """Train then evaluate one run; None, or a one-line error naming its log."""
    amp, seed = job
    for step, cmd in zip(("train", "eval"), commands(amp, seed, out, args)):
        log = os.path.join(out, "logs", f"{step}_{amp}_{seed}.log")
        with open(log, "w") as f:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            return f"{step} with --amp {amp} --seed {seed} failed (exit {rc}); see {log}"
    print(f"done: --amp {amp} --seed {seed}", flush=True)
    return None


def _sd(x: np.ndarray) -> float:
    """Sample standard deviation (NaN for a single value)."""
    return float(x.std(ddof=1)) if len(x) > 1 else float("nan")


def table(results: dict, seeds: list[int]) -> str:
    """Markdown: per acceleration, SSIM / PSNR per seed and mean +- sd per arm, then AMP - fp32."""
    lines = ["| acceleration | trained with | SSIM per seed | SSIM mean +- sd | PSNR (dB) mean +- sd |", "|---|---|---|---|---|"]
    for acc in sorted(results["true"][seeds[0]], key=int):
        ssim = {amp: np.array([results[amp][s][acc]["network"]["ssim"]["mean"] for s in seeds]) for amp in results}
        psnr = {amp: np.array([results[amp][s][acc]["network"]["psnr"]["mean"] for s in seeds]) for amp in results}
        for amp, name in (("false", "fp32"), ("true", "AMP")):
            lines.append(f"| {acc}x | {name} | {' / '.join(f'{v:.4f}' for v in ssim[amp])} | "
                         f"{ssim[amp].mean():.4f} +- {_sd(ssim[amp]):.4f} | {psnr[amp].mean():.2f} +- {_sd(psnr[amp]):.2f} |")
        diff = ssim["true"].mean() - ssim["false"].mean()
        if len(seeds) > 1:
            t = stats.ttest_ind(ssim["true"], ssim["false"], equal_var=False)
            test = f"t = {t.statistic:.2f}, p = {t.pvalue:.2f} (Welch)"
        else:
            test = "one seed: no test"
        lines.append(f"| {acc}x | AMP - fp32 | | {diff:+.4f}, {test} | {psnr['true'].mean() - psnr['false'].mean():+.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (each arm)")
    p.add_argument("--parallel", type=int, default=1, help="runs at once (a GPU has room for several small ones)")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers per training")
    p.add_argument("--max-epochs", type=int, default=None, help="override the config's epochs (smoke runs)")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "eval", "amp"))
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        print(f"error: --seeds {args.seeds!r}: expected comma-separated integers", file=sys.stderr)
        return 2
    if args.parallel < 1 or args.num_workers < 0 or (args.max_epochs is not None and args.max_epochs < 1):
        print("error: --parallel and --max-epochs must be >= 1, --num-workers >= 0", file=sys.stderr)
        return 2
    out = os.path.abspath(args.out_dir)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    jobs = [(amp, s) for s in seeds for amp in ("true", "false")]
    with ThreadPoolExecutor(args.parallel) as pool:
        errors = [e for e in pool.map(lambda job: run_one(job, out, args), jobs) if e]
    if errors:
        print("\n".join(f"error: {e}" for e in errors), file=sys.stderr)
        return 1
    results: dict = {"true": {}, "false": {}}
    for amp, s in jobs:
        with open(os.path.join(out, f"eval_{amp}_{s}", "metrics.json")) as f:
            results[amp][s] = json.load(f)
    text = table(results, seeds)
    write_text_atomic(os.path.join(out, "amp_comparison.md"), text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
