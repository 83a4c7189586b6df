import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from bundle.metrics import VolumeAccumulator, VolumeReconMetric


def _volume(seed, shape=(6, 40, 36)):
    rng = np.random.default_rng(seed)
    ref = rng.uniform(0, 2, shape).astype(np.float32)
    ref[:, :4] = 0
    pred = np.clip(ref + rng.normal(0, 0.15, shape), 0, None).astype(np.float32)
    return pred, ref


def _skimage_volume(pred, ref, win_size=None, gaussian=True):
    m = ref.max()
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False) if gaussian else dict(win_size=win_size)
    ssim = np.mean([structural_similarity(r, p, data_range=m, **kw) for p, r in zip(pred, ref)])
    psnr = peak_signal_noise_ratio(ref, pred, data_range=m)
    nmse = np.sum((ref - pred) ** 2) / np.sum(ref**2)
    return ssim, psnr, nmse


def test_volume_metrics_against_skimage():
    pred, ref = _volume(0)
    acc = VolumeAccumulator()
    for s in range(0, 6, 2):  # slices arrive in batches
        acc.add(torch.from_numpy(pred[s : s + 2, None]), torch.from_numpy(ref[s : s + 2, None]), "v", float(ref.max()))
    got = acc.per_volume()["v"]
    ssim, psnr, nmse = _skimage_volume(pred, ref)
    assert got["ssim"] == pytest.approx(ssim, abs=1e-4)
    assert got["psnr"] == pytest.approx(psnr, abs=1e-3)
    assert got["nmse"] == pytest.approx(nmse, rel=1e-4)


def test_fastmri_uniform_window():
    pred, ref = _volume(1)
    acc = VolumeAccumulator(win_size=7, kernel_type="uniform")
    acc.add(torch.from_numpy(pred[:, None]), torch.from_numpy(ref[:, None]), "v", float(ref.max()))
    # skimage's uniform window uses the sample covariance (N-1); MONAI's does not: equal to ~1e-2
    ssim, _, _ = _skimage_volume(pred, ref, win_size=7, gaussian=False)
    assert acc.per_volume()["v"]["ssim"] == pytest.approx(ssim, abs=1e-2)


def test_hand_computed_psnr_nmse():
    ref = torch.zeros(1, 1, 32, 32)
    ref[..., 16, 16] = 2.0
    pred = ref.clone()
    pred[..., 17, 17] = 0.5
    acc = VolumeAccumulator()
    acc.add(pred, ref, "v", 2.0)
    got = acc.per_volume()["v"]
    mse = (0.5 / 2.0) ** 2 / 1024  # on the [0, 1] scale of the maximum
    assert got["psnr"] == pytest.approx(10 * math.log10(1 / mse))
    assert got["nmse"] == pytest.approx(0.25 / 4.0)


def test_ignite_metric_per_volume_and_details():
    vols = {f"v{i}.nii.gz": _volume(i) for i in range(2)}
    batches = []
    for name, (pred, ref) in vols.items():
        for s in range(pred.shape[0]):
            batches.append((name, float(ref.max()), pred[s][None, None], ref[s][None, None]))

    def step(engine, batch):
        name, vmax, p, r = batch
        engine.state.batch = {"filename": [name], "volume_max": torch.tensor([vmax])}
        return {"pred": torch.from_numpy(p), "label": torch.from_numpy(r)}

    engine = Engine(step)
    VolumeReconMetric("psnr").attach(engine, "psnr")
    VolumeReconMetric("ssim").attach(engine, "ssim")
    engine.run(batches)
    expected = {n: _skimage_volume(*v) for n, v in vols.items()}
    assert engine.state.metrics["psnr"] == pytest.approx(np.mean([e[1] for e in expected.values()]), abs=1e-3)
    assert engine.state.metric_details["ssim"]["v1.nii.gz"] == pytest.approx(expected["v1.nii.gz"][0], abs=1e-4)


def test_bad_inputs_are_not_silent():
    acc = VolumeAccumulator()
    with pytest.raises(ValueError, match="differ"):
        acc.add(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 15), "v", 1.0)
    with pytest.raises(ValueError, match="maximum"):
        acc.add(torch.rand(1, 1, 16, 16), torch.zeros(1, 1, 16, 16), "v", 0.0)
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        acc.add(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), "v", 1.0)
    acc.add(torch.rand(1, 1, 16, 16), torch.zeros(1, 1, 16, 16), "z", 1.0)
    with pytest.raises(ValueError, match="all zeros"):
        acc.per_volume()
    with pytest.raises(ValueError, match="unknown metric"):
        VolumeReconMetric("vif2")
    m = VolumeReconMetric("ssim")
    m.reset()
    with pytest.raises(ValueError, match="no volumes"):
        m.compute()


def test_ssim_fastmri_equals_skimage_default():
    from bundle.metrics import ssim_fastmri

    pred, ref = _volume(3)
    m = float(ref.max())
    got = ssim_fastmri(torch.from_numpy(pred[:, None]), torch.from_numpy(ref[:, None]), m)
    expected = [structural_similarity(r, p, data_range=m) for p, r in zip(pred, ref)]  # fastMRI's call
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("noise", [0.0, 0.05, 0.3])
def test_vif_against_sewar(noise):
    from sewar.full_ref import vifp

    from bundle.metrics import vif

    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:96, 0:112]
    ref = (100 + 80 * np.sin(x / 7.0) * np.cos(y / 11.0) + rng.normal(0, 10, (96, 112))).clip(0, 255)
    pred = (ref + rng.normal(0, 255 * noise, ref.shape)) if noise else ref.copy()
    got = float(vif(torch.from_numpy(pred)[None, None], torch.from_numpy(ref)[None, None], data_range=255.0))
    expected = vifp(ref, pred)
    assert got == pytest.approx(expected, abs=1e-6)
    if noise == 0:
        assert got == pytest.approx(1.0, abs=1e-6)


def test_volume_vif_and_mse_are_reported():
    pred, ref = _volume(2)
    acc = VolumeAccumulator()
    acc.add(torch.from_numpy(pred[:, None]), torch.from_numpy(ref[:, None]), "v", float(ref.max()))
    got = acc.per_volume()["v"]
    assert 0 < got["vif"] < 1
    assert got["mse"] == pytest.approx(np.mean(((pred - ref) / ref.max()) ** 2), rel=1e-5)
    const = VolumeAccumulator()
    const.add(torch.ones(1, 1, 16, 16), torch.ones(1, 1, 16, 16), "c", 1.0)
    with pytest.raises(ValueError, match="no structure"):
        const.per_volume()


def test_clip_limits_both_images_to_the_window():
    # CT: values outside the HU window do not count; hand-computed case
    ref = torch.full((1, 1, 16, 16), 0.5)
    ref[..., 0, 0] = 1.4  # above the window: clipped to 1
    pred = ref.clone()
    pred[..., 0, 0] = 1.0  # equal after clipping
    pred[..., 5, 5] = -0.3  # below the window: clipped to 0, an error of 0.5
    acc = VolumeAccumulator(metrics=("psnr", "nmse"), clip=(0.0, 1.0))
    acc.add(pred, ref, "v", 1.0)
    got = acc.per_volume()["v"]
    assert got["psnr"] == pytest.approx(10 * math.log10(256 / 0.25))
    assert got["nmse"] == pytest.approx(0.25 / (255 * 0.25 + 1.0))
