"""configs/multi_gpu_train.yaml with torchrun: 2 processes on CPU (gloo), both ranks train, rank 0
writes the one set of checkpoints."""

from __future__ import annotations

import re
import subprocess
import sys

import torch
from conftest import ROOT, run_env


def test_two_process_gloo_training(tiny_dataset, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "monai.bundle", "run", "training", "--meta_file", "configs/metadata.json", "--config_file",
           "['configs/train.yaml','configs/multi_gpu_train.yaml']", "--logging_file", "configs/logging.conf",
           "--dataset_dir", tiny_dataset["dataset_dir"], "--datalist", tiny_dataset["datalist"],
           "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"), "--batch_size", "2",
           "--patch_size", "[32,32]", "--features", "[4,4,8,8,16,4]", "--max_epochs", "2", "--epoch_length", "3"]
    res = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=600)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    rank0 = re.findall(r"Epoch: (\d)/2, Iter: (\d)/3 -- train_loss: ([0-9.]+)", log)
    rank1 = re.findall(r"Epoch: (\d)/2, Iter: (\d)/3 -- train_loss_rank1: ([0-9.]+)", log)
    assert len(rank0) == 6 and len(rank1) == 6  # both ranks ran every iteration
    assert [r[2] for r in rank0] != [r[2] for r in rank1]  # on different slices (distributed sampler)
    assert len(re.findall(r"Epoch\[\d\] Metrics -- val_nmse", log)) == 2  # validation once per epoch (rank 0)
    files = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert files == ["last_checkpoint_epoch=2.pt", "model.pt"]
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped: loads into network_def
    from bundle.networks import ResidualUNet

    ResidualUNet(features=(4, 4, 8, 8, 16, 4)).load_state_dict(state)
