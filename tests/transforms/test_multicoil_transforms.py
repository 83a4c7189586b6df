"""Multi-coil transforms that feed a network which takes coil sensitivities: the true maps of a
simulated array, and ESPIRiT maps of real coils (cached across global phases)."""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from bundle.data.rawkspace import read_raw
from bundle.physics.mri import ifft2c
from bundle.physics.mri_sense import rss
from bundle.transforms import AugmentCoilKspaced, EspiritMapsd, SimulateMultiCoild, UndersampleMultiCoild

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "bundle", "demo_data", "multicoil", "pulseq_phantom_32ch_64.h5")


def test_simulated_maps_are_the_maps_that_made_the_coil_images():
    """Without noise, each coil image is its map times one complex image: S_c^H-combining the
    coil images gives that image, whose magnitude is the slice, and the maps have unit RSS."""
    image = torch.zeros(1, 32, 32)
    image[0, 8:24, 6:26] = torch.linspace(0.2, 1.0, 20)
    sim = SimulateMultiCoild(keys="image", coils=6, snr=0, max_phase=2.0, accelerations=4, deterministic=True,
                             maps_key="maps")
    d = sim({"image": image, "slice_id": "s0"})
    maps, full = d["maps"], d["label"]
    assert maps.shape == (6, 32, 32) and maps.is_complex()
    torch.testing.assert_close(rss(maps, 0), torch.ones(32, 32), atol=1e-5, rtol=0)
    # the fully sampled coil images are not kept, but the label is their RSS: |x| * RSS(maps) = |x|
    torch.testing.assert_close(full[0], image[0], atol=1e-5, rtol=1e-5)
    coil_images = ifft2c(d["kspace"])  # acquired only: check the maps against the data on a full mask
    assert torch.isfinite(coil_images.abs()).all()
    combined = (maps.conj() * ifft2c(sim.coil_kspace(image[0], sim.seed(d, "coils", sim.coils, sim.snr, sim.max_phase)))).sum(0)
    torch.testing.assert_close(combined.abs(), image[0], atol=1e-5, rtol=1e-5)


def test_espirit_maps_of_real_coils_are_unit_rss_and_cached_across_a_global_phase():
    raw = read_raw(DEMO)
    full = torch.from_numpy(raw.kspace[0])
    under = UndersampleMultiCoild(keys="image", accelerations=4, deterministic=True)
    espirit = EspiritMapsd()
    d = espirit(under({"image": full, "slice_id": "p"}))
    maps = d["maps"]
    assert maps.shape == full.shape
    torch.testing.assert_close(rss(maps, 0), torch.ones(full.shape[-2:]), atol=1e-3, rtol=0)
    # the maps explain the coil images: projecting the fully sampled coil images on them keeps
    # most of the energy where there is signal (ESPIRiT's eigenvalue-1 subspace)
    coils = ifft2c(full)
    signal = rss(coils, 0) > 0.2 * rss(coils, 0).max()
    kept = (maps.conj() * coils).sum(0).abs()[signal].pow(2).sum() / rss(coils, 0)[signal].pow(2).sum()
    assert kept > 0.9
    # a global phase gives the same maps (SigPy normalises the phase), so the cache may serve them
    phased = full * complex(math.cos(1.0), math.sin(1.0))
    uncached = under({"image": phased, "slice_id": "p"})
    del uncached["slice_id"]  # no identity: computed afresh, not cached
    fresh = EspiritMapsd()(uncached)["maps"]
    torch.testing.assert_close(fresh, maps, atol=2e-3, rtol=0)
    rotated = espirit(under({"image": phased, "slice_id": "p"}))
    assert rotated["maps"] is maps and len(espirit.cache) == 1
    # flips made by the augmentation are part of the key: flipped data get their own maps
    aug = AugmentCoilKspaced(keys="image", flip_prob=1.0)
    flipped = espirit(under(aug({"image": full, "slice_id": "p"})))
    assert "augmentation" not in flipped
    assert flipped["maps"] is not maps and len(espirit.cache) == 2
    torch.testing.assert_close(rss(flipped["maps"], 0), torch.ones(full.shape[-2:]), atol=1e-3, rtol=0)


def test_espirit_maps_transform_takes_the_calibration_it_is_given():
    """calibration="window": the transform's maps are `sensitivities` on the whole calibration
    region, "square" on SigPy's square, and they differ; the default is the shipped calibration;
    an unknown one stops with one line."""
    import pytest

    from bundle.errors import InputError
    from bundle.parallel_imaging import ESPIRIT_CALIBRATION, sensitivities

    raw = read_raw(DEMO)
    under = UndersampleMultiCoild(keys="image", accelerations=4, deterministic=True)
    d = under({"image": torch.from_numpy(raw.kspace[0]), "slice_id": "p"})
    k, mask = d["kspace"].numpy(), d["mask"].reshape(-1).numpy()
    window = EspiritMapsd(calibration="window")(dict(d))["maps"]
    np.testing.assert_allclose(window.numpy(), sensitivities(k, mask, calibration="window"), atol=1e-6)
    default = EspiritMapsd()(dict(d))["maps"]
    np.testing.assert_allclose(default.numpy(), sensitivities(k, mask, calibration=ESPIRIT_CALIBRATION), atol=1e-6)
    square = EspiritMapsd(calibration="square")(dict(d))["maps"]
    np.testing.assert_allclose(square.numpy(), sensitivities(k, mask, calibration="square"), atol=1e-6)
    assert (window - square).abs().max() > 0.01
    with pytest.raises(InputError, match="espirit_calibration"):
        EspiritMapsd(calibration="circle")


def test_readout_oversampling_centres_the_object_in_a_longer_grid_with_the_same_draws():
    """oversampling=2: a grid twice as long along H, the same coil images in its centre (the coil,
    phase and noise draws of the grid without oversampling), nothing but noise around them, maps
    of unit RSS everywhere; the default (1) keeps the seeds of earlier releases."""
    image = torch.zeros(1, 32, 24)
    image[0, 6:26, 4:20] = torch.linspace(0.3, 1.0, 16)
    plain = SimulateMultiCoild(keys="image", coils=(4, 8), snr=0, accelerations=4, deterministic=True, maps_key="maps")
    longer = SimulateMultiCoild(keys="image", coils=(4, 8), snr=0, accelerations=4, deterministic=True, maps_key="maps",
                                oversampling=2)
    assert plain.acquisition() == ("coils", plain.coils, plain.snr, plain.max_phase)
    seed = 1234
    k1, m1 = plain.coil_data(image[0], seed)
    k2, m2 = longer.coil_data(image[0], seed)
    assert k2.shape == (k1.shape[0], 64, 24) and m2.shape == k2.shape
    coils1, coils2 = ifft2c(k1), ifft2c(k2)
    torch.testing.assert_close(coils2[:, 16:48], coils1, atol=1e-5, rtol=1e-5)
    assert coils2[:, :16].abs().max() < 1e-5 and coils2[:, 48:].abs().max() < 1e-5
    torch.testing.assert_close(m2[:, 16:48], m1)
    torch.testing.assert_close(rss(m2, 0), torch.ones(64, 24), atol=1e-5, rtol=0)
    d = longer({"image": image, "slice_id": "s"})
    assert d["label"].shape == (1, 64, 24) and d["kspace"].shape[-2:] == (64, 24) and d["mask"].shape == (1, 1, 24)
    torch.testing.assert_close(d["label"][0, 16:48], image[0], atol=1e-5, rtol=1e-5)
    # a range draws lengths between the limits, even, per seed
    ranged = SimulateMultiCoild(keys="image", oversampling=(1, 2))
    lengths = {ranged.readout_length(32, s) for s in range(40)}
    assert min(lengths) >= 32 and max(lengths) <= 64 and len(lengths) > 5 and all(n % 2 == 0 for n in lengths)


def test_oversampling_out_of_range_is_refused():
    import pytest

    from bundle.errors import InputError

    for bad in (0.5, 5, (2, 1), float("nan")):
        with pytest.raises(InputError, match="oversampling"):
            SimulateMultiCoild(keys="image", oversampling=bad)
