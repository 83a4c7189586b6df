"""Give every shipped checkpoint its metadata: the modality, the architecture, the acquisition and
normalisation it was trained for, and the bundle version, carried in the state dict itself
(`bundle.networks.with_metadata`: the file stays a plain state dict that MONAI's ckpt_export and
MONAI Label load as before); inference checks it when it loads the weights
(bundle.networks.load_checkpoint).

The metadata of each file comes from the training configs (and options) it was trained with, as
the model card documents them: the same `weights_info` a training run now writes itself.
The weights are checked to load into that network (strictly) before the file is replaced,
atomically. Run once after release 0.10.0; running it again rewrites the same metadata.

    python scripts/convert_weights.py            # all shipped weights in models/
    python scripts/convert_weights.py --check    # only report what each file holds
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from bundle.data.io import atomic_output  # noqa: E402
from bundle.errors import InputError, format_error  # noqa: E402
from bundle.networks import safe_load, with_metadata  # noqa: E402

# file -> (training configs, options): how each shipped model was trained (docs/README.md)
SHIPPED = {
    "model.pt": (["train.yaml"], {}),
    "model_light.pt": (["train.yaml"], {"model_variant": "light"}),
    "model_ct.pt": (["train.yaml", "train_ct.yaml"], {}),
    "model_ct_lowdose.pt": (["train.yaml", "train_ct.yaml"], {"incident_photons": 10000, "electronic_noise": 5}),
    "model_ct_real.pt": (["train.yaml", "train_ct.yaml", "train_ct_real.yaml"], {}),
    "model_multicoil.pt": (["train.yaml", "train_multicoil.yaml", "train_multicoil_real.yaml"], {}),
    "model_pet.pt": (["train.yaml", "train_pet.yaml"], {}),
    "model_xray.pt": (["train.yaml", "train_xray.yaml"], {}),
}


def metadata_for(configs: list[str], options: dict) -> tuple[dict, torch.nn.Module]:
    """The training configs' `weights_info` and a fresh `network_def`."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([os.path.join(ROOT, "configs", c) for c in configs])
    parser.config["bundle_root"] = ROOT
    for key, value in options.items():
        parser[key] = value
    info = parser.get_parsed_content("weights_info", instantiate=True)
    return dict(info), parser.get_parsed_content("network_def", instantiate=True)


def convert(path: str, configs: list[str], options: dict, write: bool = True) -> dict:
    state = safe_load(path)
    weights = state["model"] if isinstance(state, dict) and isinstance(state.get("model"), dict) else state
    info, network = metadata_for(configs, options)
    network.load_state_dict(weights)  # the metadata describes a network these weights fit
    info["converted_by"] = "scripts/convert_weights.py (weights unchanged)"
    if write:
        with atomic_output(path, ".pt") as tmp:
            torch.save(with_metadata(weights, info), tmp)
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=os.path.join(ROOT, "models"))
    p.add_argument("--check", action="store_true", help="report only; write nothing")
    args = p.parse_args(argv)
    try:
        for name, (configs, options) in SHIPPED.items():
            path = os.path.join(args.models, name)
            if not os.path.isfile(path):
                raise InputError(f"{path}: file not found")
            info = convert(path, configs, options, write=not args.check)
            arch = info["architecture"]
            print(f"{name}: {info['modality']}, {arch['network']} {arch.get('features')}, acquisition "
                  f"{info['acquisition']}")
    except Exception as e:  # one line for the person running it
        print(f"error: {format_error(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
