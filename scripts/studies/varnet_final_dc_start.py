"""The start of the 0.13 multi-coil fine-tuning: the 0.12 weights (ESPIRiT maps, CG-SENSE start)
with the final data consistency switched on. The final data consistency has no weights, so the
state dict is unchanged; only its metadata says `final_dc: true`, so that the training config's
network (the "cpu" variant, final_dc true) loads it with `--pretrained`.

    git show 9b9775c:models/model_multicoil.pt > /tmp/mc012.pt
    python scripts/studies/varnet_final_dc_start.py /tmp/mc012.pt -o /tmp/start013.pt
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bundle.errors import install_excepthook  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import torch

    from bundle.data.io import atomic_output
    from bundle.errors import InputError
    from bundle.networks import load_checkpoint, metadata_of, safe_load, with_metadata
    from bundle.varnet import VarNet, varnet_variant

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", help="0.12 multi-coil weights (final_dc absent or false)")
    ap.add_argument("-o", "--output", required=True, help="the start weights to write")
    args = ap.parse_args(argv)
    if os.path.abspath(args.output) == os.path.abspath(args.ckpt):
        raise InputError(f"{args.output}: would overwrite the input")
    state = safe_load(args.ckpt, "cpu")
    meta = metadata_of(state) or {}
    arch = dict(meta.get("architecture") or {})
    if arch.get("sensitivities") != "espirit":
        raise InputError(f"{args.ckpt}: not 0.12 weights (ESPIRiT maps); found {arch or 'no metadata'}")
    load_checkpoint(VarNet(**dict(varnet_variant("cpu"), final_dc=bool(arch.get("final_dc", False)))), args.ckpt)
    meta["architecture"] = dict(arch, final_dc=True)
    with atomic_output(args.output, suffix=".pt") as tmp:
        torch.save(with_metadata(dict(state), meta), tmp)
    load_checkpoint(VarNet(**varnet_variant("cpu")), args.output)  # loads as the training config builds it
    print(f"wrote {args.output}: the weights of {args.ckpt} with final_dc true")
    return 0


if __name__ == "__main__":
    install_excepthook()
    raise SystemExit(main())
