"""The short runs behind the radiograph config's batch norm: 100 iterations of L1 training on
noisy (I0 = 200) 128-pixel patches of the demo tibia, PSNR on the demo chest.

    python scripts/studies/ablation_xray_norm.py      # needs the radiograph demo (made by its training config)

Measured on the 2-core CPU machine: noisy 24.3 dB; no norm 24.4, batch 29.0, instance 25.6 dB.
"""

from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import nibabel as nib  # noqa: E402
import torch  # noqa: E402

from bundle.networks import ResidualUNet  # noqa: E402
from bundle.transforms import percentile_scale  # noqa: E402
from bundle.data.demo import XRAY_DEMO_DIR, ensure_xray_datalist  # noqa: E402
from bundle.physics.noise import low_dose_radiograph as low_dose_image  # noqa: E402


def load(name: str) -> torch.Tensor:
    a = torch.from_numpy(nib.load(str(XRAY_DEMO_DIR / name)).get_fdata()[:, :, 0]).float()
    return (a / percentile_scale(a))[None, None]


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    return 10 * math.log10(float(y.max()) ** 2 / float(((x - y) ** 2).mean()))


def main() -> int:
    ensure_xray_datalist(str(XRAY_DEMO_DIR / "datalist.json"), str(XRAY_DEMO_DIR))
    train, test = load("cr_tibia.nii.gz"), load("cr_chest.nii.gz")
    noisy = low_dose_image(test, 200.0, 2.0, torch.Generator().manual_seed(0))
    print(f"noisy {psnr(noisy, test):.2f} dB")
    for norm in (None, "batch", "instance"):
        torch.manual_seed(0)
        net = ResidualUNet(norm=norm, data_consistency=False)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(1)
        for _ in range(100):
            ij = [torch.randint(0, train.shape[-1] - 128, (2,), generator=g) for _ in range(8)]
            y = torch.stack([train[0, :, i:i + 128, j:j + 128] for i, j in ij])
            loss = (net(low_dose_image(y, 200.0, 2.0, g)) - y).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            print(f"norm {norm}: {psnr(net(noisy), test):.2f} dB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
