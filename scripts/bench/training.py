"""Training throughput of the bundle against a plain PyTorch loop, in alternated rounds."""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.common import (
    peak_memory_mb, reset_peak, sync, train_parser,
)
from bundle.networks import ResidualUNet


def time_bundle_training(parser, warmup: int, device: torch.device) -> tuple[float, int]:
    """slices/s of `train#trainer.run()` after `warmup` iterations, and the slices timed."""
    from ignite.engine import Events

    trainer = parser.get_parsed_content("train#trainer")
    stamps: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: (sync(device), stamps.append(time.perf_counter())))
    trainer.run()
    timed = len(stamps) - 1 - warmup
    batch = parser.get_parsed_content("batch_size")
    return timed * batch / (stamps[-1] - stamps[warmup]), timed * batch


def time_reference_training(parser, warmup: int, iterations: int, device: torch.device) -> float:
    """The same dataset, network, loss, optimiser and batch size in a plain PyTorch loop."""
    dataset = parser.get_parsed_content("train#dataset")
    loader = torch.utils.data.DataLoader(dataset, batch_size=parser.get_parsed_content("batch_size"), shuffle=True,
                                         num_workers=parser.get_parsed_content("num_workers"))
    net = ResidualUNet(features=parser.get_parsed_content("features")).to(device).train()
    loss_fn = parser.get_parsed_content("loss")
    opt = torch.optim.Adam(net.parameters(), lr=parser.get_parsed_content("learning_rate"))
    stamps, n = [], 0
    while n < iterations:
        for batch in loader:
            image, label = batch["image"].to(device), batch["label"].to(device)
            kspace, mask = batch["kspace"].to(device), batch["mask"].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(image, kspace=kspace, mask=mask), label)
            loss.backward()
            opt.step()
            sync(device)
            stamps.append(time.perf_counter())
            n += 1
            if n >= iterations:
                break
    return (len(stamps) - 1 - warmup) * loader.batch_size / (stamps[-1] - stamps[warmup])


def rows(add, args, device) -> None:
    """The bundle pipeline against the plain loop, same work, in alternated rounds (best of each: the
    machine's own drift hits both) and each round's ratio."""
    bundle_rates, ref_rates = [], []
    for _ in range(args.rounds):
        parser = train_parser(args, device)
        reset_peak(device)
        bundle_rates.append(time_bundle_training(parser, args.warmup, device)[0])
        bundle_mem = peak_memory_mb(device)
        parser = train_parser(args, device)
        ref_rates.append(time_reference_training(parser, args.warmup, args.iterations + args.warmup + 1, device))
    bundle_rate, ref_rate = max(bundle_rates), max(ref_rates)
    add("training", f"bundle pipeline (SupervisedTrainer + handlers), batch {args.batch} of {args.patch}x{args.patch}",
        bundle_rate, "slices/s")
    add("training", "bundle pipeline peak memory", bundle_mem, "MiB")
    add("training", "plain PyTorch loop (same data, net, loss, batch)", ref_rate, "slices/s")
    add("training", "ratio bundle / plain loop", bundle_rate / ref_rate, "x")
    paired = [b / r for b, r in zip(bundle_rates, ref_rates)]  # each round's pair ran back to back
    add("training", "ratio bundle / plain loop, each round: " + " ".join(f"{v:.3f}" for v in paired),
        float(np.mean(paired)), "x (mean)")
    if len(paired) > 1:  # is the difference beyond the machine's spread? (Student t over the rounds)
        from bundle.reporting.comparison import summarize

        ci = summarize(paired)
        add("training", "ratio bundle / plain loop, 95% CI of the mean over rounds: low", ci["ci_low"], "x")
        add("training", "ratio bundle / plain loop, 95% CI of the mean over rounds: high", ci["ci_high"], "x")
