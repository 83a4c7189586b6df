"""scripts/benchmark.py on tiny sizes: every section runs and writes its CSV, table and plot (no
timing assertions: speed is measured by running the script, not by tests)."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from conftest import ROOT, run_env


def test_benchmark_quick_run(tmp_path):
    res = subprocess.run([sys.executable, "scripts/benchmark.py", "--quick", "--device", "cpu", "--ct-volume", "1",
                          "--out-dir", str(tmp_path)], cwd=ROOT, env=run_env(), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "benchmark.csv")))
    names = {r["name"] for r in rows}
    for expected in ("standard parameters", "light parameters", "ratio bundle / plain loop",
                     "ratio network / compressed sensing (speed)", "compressed_sensing SSIM (same slices)"):
        assert expected in names, expected
    ct_rows = [r["name"] for r in rows if r["section"] == "volume" and "CT volume" in r["name"]]
    # the simulated scan alone, then with and without data consistency: from the simulation, from the
    # scan; and the build of the system matrix that data consistency runs on, with its size
    assert len(ct_rows) == 6 and sum("from its scan" in n for n in ct_rows) == 2
    matrix = {r["unit"]: float(r["value"]) for r in rows if "system matrix" in r["name"]}
    assert set(matrix) == {"s", "MiB"} and matrix["s"] > 0 and matrix["MiB"] > 0
    assert {r["section"] for r in rows} == {"model", "data", "training", "inference", "volume", "multicoil", "scaling"}
    multicoil = [r for r in rows if r["section"] == "multicoil"]
    # eight methods (the 0.15 average, the 0.17-0.18 solver and 0.19-0.22's square maps beside the
    # shipped joint), the peak memory and four ratios, all positive
    assert len(multicoil) == 13 and all(float(r["value"]) > 0 for r in multicoil)
    assert sum(r["unit"] == "s/slice" for r in multicoil) == 8
    cache_rows = [r for r in rows if r["section"] == "data" and " cached " in r["name"]]
    assert len(cache_rows) == 4 and all(float(r["value"]) > 0 and r["unit"] == "s" for r in cache_rows)
    transform_rows = [r for r in rows if r["section"] == "data" and "slice transforms" in r["name"]]
    assert len(transform_rows) == 2 and all(float(r["value"]) > 0 and r["unit"] == "ms" for r in transform_rows)
    assert len([r for r in rows if r["section"] == "data"]) == 6
    assert any("PersistentDataset" in r["name"] for r in cache_rows) and any("CacheDataset" in r["name"] for r in cache_rows)
    params = {r["name"]: float(r["value"]) for r in rows if r["name"].endswith("parameters")}
    # BasicUNet 16-16-32-64-128-16 (2D, 1 -> 1 channel, instance norm): 494,369 parameters, counted independently
    from monai.networks.nets import BasicUNet

    ref = sum(p.numel() for p in BasicUNet(spatial_dims=2, in_channels=1, out_channels=1,
                                            features=(16, 16, 32, 64, 128, 16), norm="instance").parameters())
    assert params["standard parameters"] == ref
    assert 3.5 < params["standard parameters"] / params["light parameters"] < 4.5
    assert all(float(r["value"]) > 0 for r in rows if r["unit"] == "slices/s")
    # cost against size and batch: inference and training step of both variants (--quick: sizes 32, 64; batches 1, 2)
    scaling = {r["name"] for r in rows if r["section"] == "scaling"}
    for variant in ("standard", "light"):
        for what in ("inference", "training step"):
            assert {f"{variant} {what} 32x32 batch 8", f"{variant} {what} 64x64 batch 8"} <= {
                n.replace(" (model only)", "") for n in scaling}
            assert {f"{variant} {what} 128x128 batch {b}" for b in (1, 2)} <= {n.replace(" (model only)", "") for n in scaling}
    # CS's trade-off: the --quick sweep is one further iteration count, speed and SSIM
    sweep = {r["name"]: float(r["value"]) for r in rows if r["name"].startswith("compressed_sensing, ")}
    assert set(sweep) == {"compressed_sensing, 2 iterations", "compressed_sensing, 2 iterations, SSIM"}
    assert 0 < sweep["compressed_sensing, 2 iterations, SSIM"] <= 1
    # seconds per MRI volume of the network and of both baselines, through the same simulation
    mri = {r["name"]: float(r["value"]) for r in rows if r["section"] == "volume" and "MRI volume" in r["name"]}
    assert set(mri) >= {"32x32x4 MRI volume", "32x32x4 MRI volume, zero-filled",
                        "32x32x4 MRI volume, compressed sensing (3 iterations)",
                        "ratio network / compressed sensing per MRI volume (speed)"}
    assert all(v > 0 for v in mri.values())
    assert mri["ratio network / compressed sensing per MRI volume (speed)"] == pytest.approx(
        mri["32x32x4 MRI volume, compressed sensing (3 iterations)"] / mri["32x32x4 MRI volume"], rel=1e-4)
    assert (tmp_path / "benchmark_scaling.png").stat().st_size > 10_000 and (tmp_path / "benchmark.md").exists()


def test_benchmark_sections(tmp_path, capsys):
    """--sections runs only those (no plot without the scaling section); bad options are refused."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import benchmark
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert benchmark.main(["--quick", "--device", "cpu", "--sections", "model", "--out-dir", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "benchmark.csv")))
    assert rows and {r["section"] for r in rows} == {"model"}
    assert not (tmp_path / "benchmark_scaling.png").exists()
    for bad, message in ((["--sections", "volume,speed"], "unknown --sections speed"), (["--rounds", "0"], "--rounds"),
                         (["--cs-sweep", "10,x"], "--cs-sweep"), (["--cs-sweep", "0"], "at least 1")):
        with pytest.raises(SystemExit) as exit_info:
            benchmark.main(bad)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
