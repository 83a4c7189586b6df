"""The multi-coil unrolled network: soft data consistency, normalised learned sensitivities, scale
equivariance, masks of every kind, and its bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bundle.errors import InputError
from bundle.physics.mri import cartesian_mask, fft2c, ifft2c
from bundle.physics.mri_sense import birdcage_maps, rss
from bundle.varnet import VarNet, varnet_variant

TINY = {"cascades": 2, "features": (4, 4, 8, 8, 16, 4), "sens_features": (2, 2, 4, 4, 8, 2)}


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def acquisition(coils=4, h=32, w=32, acc=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.avg_pool2d(torch.rand(1, 1, h, w, generator=gen), 5, 1, 2)[0, 0]
    full = fft2c(birdcage_maps(coils, (h, w)) * img.to(torch.complex64))
    mask = cartesian_mask(w, acc, 0.125, "equispaced", np.random.default_rng(seed))
    return full, mask


def test_soft_data_consistency_moves_the_acquired_samples_towards_the_data():
    """With the regulariser switched off, one cascade is k - w M (k - y): the residual on the
    acquired samples shrinks by exactly (1 - w), and nothing else changes."""
    torch.manual_seed(0)
    net = VarNet(cascades=1, features=TINY["features"], sens_features=TINY["sens_features"])
    block = net.cascades[0]
    block.model = Zero()
    with torch.no_grad():
        block.dc_weight.fill_(0.3)
    full, mask = acquisition()
    y = full * mask
    current = y + 0.5 * torch.randn(y.shape, dtype=y.dtype)  # a guess that disagrees with the data
    maps = torch.view_as_real(birdcage_maps(4, (32, 32))[None].contiguous())
    m5 = mask.view(1, 1, 1, -1, 1).bool()
    out = torch.view_as_complex(block(torch.view_as_real(current[None]), torch.view_as_real(y[None]), m5, maps))[0]
    before = ((current - y) * mask).abs().norm()
    after = ((out - y) * mask).abs().norm()
    assert after < before
    torch.testing.assert_close(after / before, torch.tensor(0.7), atol=1e-5, rtol=0)
    torch.testing.assert_close(out * (1 - mask.float()), current * (1 - mask.float()))


def test_learned_sensitivities_are_normalised_and_the_output_scales_with_the_data():
    torch.manual_seed(0)
    net = VarNet(**TINY).eval()
    full, mask = acquisition(coils=5)
    y = (full * mask)[None]
    with torch.no_grad():
        image, maps = net.reconstruct(y, mask.view(1, 1, 1, -1))
        scaled, _ = net.reconstruct(y * 1000.0, mask.view(1, 1, 1, -1))
    assert image.shape == (1, 1, 32, 32) and maps.shape == (1, 5, 32, 32)
    torch.testing.assert_close(rss(maps, 1), torch.ones(1, 32, 32), atol=1e-5, rtol=0)
    torch.testing.assert_close(scaled, image * 1000.0, rtol=1e-3, atol=1e-3 * float(scaled.max()))


def test_batches_of_different_masks_and_2d_masks():
    torch.manual_seed(0)
    net = VarNet(**TINY).eval()
    (f1, m1), (f2, m2) = acquisition(seed=1, acc=4), acquisition(seed=2, acc=8)
    batch = torch.stack([f1 * m1, f2 * m2])
    masks = torch.stack([m1, m2]).view(2, 1, 1, -1)
    with torch.no_grad():
        both = net(batch, masks)
        one = net((f2 * m2)[None], m2.view(1, 1, 1, -1))
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-4)
    mask2d = torch.zeros(32, 32, dtype=torch.bool)  # samples on a 2D grid with a 6 x 6 calibration box
    mask2d[::2, ::2] = True
    mask2d[13:19, 13:19] = True
    with torch.no_grad():
        out = net((f1 * mask2d)[None], mask2d)
    assert out.shape == (1, 1, 32, 32) and torch.isfinite(out).all()


def test_bad_network_inputs():
    net = VarNet(**TINY)
    full, mask = acquisition()
    with pytest.raises(InputError, match="complex"):
        net(full.abs()[None], mask)
    with pytest.raises(InputError, match="the mask is"):
        net(full[None], mask[:-1])
    no_centre = mask.clone()
    no_centre[12:20] = False
    with pytest.raises(InputError, match="no fully sampled k-space centre"):
        net((full * no_centre)[None], no_centre)
    with pytest.raises(InputError, match="cascades"):
        VarNet(cascades=0)
    with pytest.raises(InputError, match="six positive integers"):
        VarNet(features=(4, 4))
    with pytest.raises(InputError, match="unknown varnet variant"):
        varnet_variant("huge")
    assert varnet_variant("gpu")["cascades"] > varnet_variant("cpu")["cascades"]


def test_the_cg_sense_start_with_true_maps_recovers_the_unacquired_lines():
    """With given (true) maps, the start of the cascades is CG-SENSE with its acquired samples
    kept: at R = 2 on a noise-free phantom with 8 birdcage coils it recovers the k-space lines
    that were not acquired (the zero-filled start has none of them), and keeps the acquired ones."""
    full, _ = acquisition(coils=8, acc=2)
    mask = torch.zeros(32, dtype=torch.bool)
    mask[::2] = True
    mask[12:20] = True
    net = VarNet(cascades=1, features=TINY["features"], sensitivities="espirit", sense_iterations=30,
                 sense_weight=1e-6)
    y = (full * mask)[None]
    m = mask.view(1, 1, 1, -1)
    maps = birdcage_maps(8, (32, 32))[None]
    with torch.no_grad():
        start = net.sense_start(y, m, maps)[0]
    missing = ~mask
    error = (start - full)[..., missing].abs().norm() / full[..., missing].abs().norm()
    assert error < 0.02
    torch.testing.assert_close(start[..., mask], full[..., mask])


def test_a_network_that_takes_maps_refuses_none_or_the_wrong_coil_count():
    net = VarNet(cascades=1, features=TINY["features"], sensitivities="espirit", sense_iterations=2)
    assert net.takes_maps and net.sensitivity is None
    full, mask = acquisition(coils=4)
    y = (full * mask)[None]
    with pytest.raises(InputError, match="none were given"):
        net(y, mask.view(1, 1, 1, -1))
    with pytest.raises(InputError, match="coil sensitivities are"):
        net(y, mask.view(1, 1, 1, -1), birdcage_maps(3, (32, 32))[None])
    out = net(y, mask.view(1, 1, 1, -1), birdcage_maps(4, (32, 32))[None])
    assert out.shape == (1, 1, 32, 32) and torch.isfinite(out).all()
    out.sum().backward()  # the learned CG-SENSE weight is trained through the CG steps
    assert net.log_sense_weight is not None and net.log_sense_weight.grad is not None
    assert torch.isfinite(net.log_sense_weight.grad)


@pytest.mark.parametrize("kwargs, message", [
    ({"sensitivities": "guess"}, "sensitivities must be"),
    ({"sense_iterations": 3}, "needs sensitivities: espirit"),
    ({"sensitivities": "espirit", "sense_iterations": -1}, "sense_iterations"),
    ({"sensitivities": "espirit", "sense_iterations": 2, "sense_weight": 0}, "sense_weight"),
])
def test_bad_map_options_are_refused(kwargs, message):
    with pytest.raises(InputError, match=message):
        VarNet(cascades=1, features=TINY["features"], **kwargs)


def test_weights_from_before_012_name_the_variant_that_reads_them(tmp_path):
    """A 0.11 checkpoint (learned maps; its metadata has no `sensitivities`) in the 0.12 network
    stops with one line that says what was found and which variant reads it; that variant does."""
    from bundle.networks import load_checkpoint, with_metadata

    old = VarNet(**varnet_variant("learned-cpu"))
    arch = {k: v for k, v in old.architecture().items() if k not in ("sensitivities", "sense_iterations", "final_dc")}
    path = tmp_path / "old.pt"
    torch.save(with_metadata(old.state_dict(), {"modality": "mri_multicoil", "architecture": arch}), path)
    with pytest.raises(InputError, match="sensitivities learned.*use --varnet_variant learned-cpu"):
        load_checkpoint(VarNet(**varnet_variant("cpu")), str(path), modality="mri_multicoil")
    load_checkpoint(VarNet(**varnet_variant("learned-cpu")), str(path), modality="mri_multicoil")


@pytest.mark.parametrize("final_dc", [True, False])
def test_the_final_data_consistency_keeps_the_measured_samples(final_dc):
    """With `final_dc` the final coil k-space equals the measured samples where they were
    acquired (exactly, on the data's scale) and is filled in elsewhere; without it the cascades'
    soft data consistency leaves it near them but not on them."""
    torch.manual_seed(0)
    net = VarNet(cascades=2, features=TINY["features"], sensitivities="espirit", sense_iterations=3,
                 final_dc=final_dc).eval()
    full, mask = acquisition(coils=4)
    y = (full * mask)[None] * 1e-3  # a scanner's scale: the network divides it out and back
    with torch.no_grad():
        k, _ = net.final_kspace(y, mask.view(1, 1, 1, -1), birdcage_maps(4, (32, 32))[None])
        image = net(y, mask.view(1, 1, 1, -1), birdcage_maps(4, (32, 32))[None])
    acquired = mask.bool()
    gap = (k[..., acquired] - y[..., acquired]).abs().max() / y.abs().max()
    assert (gap < 1e-6) == final_dc
    assert k[..., ~acquired].abs().max() > 1e-3 * y.abs().max()
    torch.testing.assert_close(image[0, 0], (ifft2c(k[0]).abs() ** 2).sum(0).sqrt())


def test_weights_without_the_final_data_consistency_name_the_option_that_reads_them(tmp_path):
    """0.12 weights (ESPIRiT maps, no `final_dc` in their metadata) in the 0.13 network stop with
    one line naming the option; with that option they load."""
    from bundle.networks import load_checkpoint, with_metadata

    settings = dict(varnet_variant("cpu"), final_dc=False)
    old = VarNet(**settings)
    arch = {k: v for k, v in old.architecture().items() if k != "final_dc"}
    path = tmp_path / "v012.pt"
    torch.save(with_metadata(old.state_dict(), {"modality": "mri_multicoil", "architecture": arch}), path)
    with pytest.raises(InputError, match="final_dc False.*--multicoil_final_dc false"):
        load_checkpoint(VarNet(**varnet_variant("cpu")), str(path), modality="mri_multicoil")
    load_checkpoint(VarNet(**settings), str(path), modality="mri_multicoil")


@pytest.mark.parametrize("shape", [(8, 6), (7, 5)])
def test_each_symmetry_is_the_same_transform_in_k_space_and_in_the_image(shape):
    """`apply_symmetry` transforms k-space by permutation (and conjugation); `image_symmetry` is
    the same transform on images: fft2c of the transformed image equals the transformed k-space
    (even and odd sizes, where the centre index differs), a column mask is unchanged, a 2D mask is
    reversed with the readout, and each symmetry is its own inverse. Hand check of the reflection:
    index i -> (2 (n // 2) - i) mod n."""
    from bundle.varnet import SYMMETRIES, _reverse, apply_symmetry, image_symmetry

    assert _reverse(torch.arange(6), 0).tolist() == [0, 5, 4, 3, 2, 1]
    assert _reverse(torch.arange(5), 0).tolist() == [4, 3, 2, 1, 0]
    gen = torch.Generator().manual_seed(1)
    k = torch.randn(2, 3, *shape, dtype=torch.complex128, generator=gen)
    maps = torch.randn(2, 3, *shape, dtype=torch.complex128, generator=gen)
    column = torch.rand(1, 1, 1, shape[1], generator=gen) > 0.5
    grid = torch.rand(1, 1, *shape, generator=gen) > 0.5
    for name in SYMMETRIES:
        k2, m2, s2 = apply_symmetry(name, k, column, maps)
        torch.testing.assert_close(fft2c(image_symmetry(name, ifft2c(k))), k2)
        torch.testing.assert_close(s2, image_symmetry(name, maps))
        assert torch.equal(m2, column)
        _, g2, _ = apply_symmetry(name, k, grid, None)
        assert torch.equal(g2, grid if name in ("identity", "conjugate") else grid.flip(-2).roll(1 - shape[0] % 2, -2))
        torch.testing.assert_close(image_symmetry(name, image_symmetry(name, maps)), maps)
    with pytest.raises(InputError, match="unknown symmetry"):
        apply_symmetry("rotate", k, column, maps)


def test_the_self_ensemble_keeps_the_measured_samples_and_equals_one_pass_for_an_equivariant_network():
    """The average over symmetries keeps the acquired samples (every pass's final data
    consistency does); with the regularisers switched off (zero UNets: the network is the
    CG-SENSE start, which is equivariant), the ensemble equals one pass."""
    from bundle.varnet import ensemble_coil_images

    torch.manual_seed(0)
    net = VarNet(cascades=2, features=TINY["features"], sensitivities="espirit", sense_iterations=5, final_dc=True).eval()
    full, mask = acquisition(coils=4)
    y, m, maps = (full * mask)[None], mask.view(1, 1, 1, -1), birdcage_maps(4, (32, 32))[None]
    with torch.no_grad():
        coils, used = ensemble_coil_images(net, y, m, maps)
    acquired = mask.bool()
    k = fft2c(coils)
    assert (k[..., acquired] - y[..., acquired]).abs().max() < 1e-5 * y.abs().max()
    torch.testing.assert_close(used, maps)
    for cascade in net.cascades:
        cascade.model = Zero()
    with torch.no_grad():
        one = net.coil_images(y, m, maps)[0]
        coils = ensemble_coil_images(net, y, m, maps)[0]
    torch.testing.assert_close(coils, one, atol=1e-5 * float(one.abs().max()), rtol=0)
