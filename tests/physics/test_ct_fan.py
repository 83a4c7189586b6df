"""Fan-beam CT physics: the adjoint identity, FBP of analytic phantoms (a disc's attenuation, the
Shepp-Logan phantom), Parker's short scan, rebinning to parallel beam, view subsets, TV."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bundle.errors import InputError
from bundle.physics.ct import ParallelBeamProjector
from bundle.physics.ct_fan import (
    FanBeamGeometry,
    FanBeamProjector,
    parker_weights,
    projector_for,
    rebin_to_parallel,
    select_views,
)
from bundle.physics.ct_geometry import ParallelBeamGeometry, sparse_view_geometry, view_weights
from bundle.physics.tv import divergence, gradient, tv_least_squares


def fan(n=96, px=0.5, views=720, arc=360.0, det=220, spacing=0.45, so=150.0, sd=250.0, offset=0.0):
    angles = tuple(np.arange(views) * arc / views)
    return FanBeamGeometry((n, n), (px, px), angles, det, spacing, so, sd, offset)


def disc(n, px, cx=4.0, cy=-3.0, r=12.0, mu=0.02, dtype=torch.float64):
    c = (torch.arange(n, dtype=dtype) - (n - 1) / 2) * px
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    inside = ((xx - cx) ** 2 + (yy - cy) ** 2) < r**2
    return inside.to(dtype) * mu, xx, yy


@pytest.mark.parametrize("offset", [0.0, 3.7])
def test_fan_projector_adjoint_identity(offset):
    g = fan(n=40, px=1.0, views=37, arc=250.0, det=70, spacing=1.3, so=120.0, sd=200.0, offset=offset)
    p = FanBeamProjector(g)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 40, 40, generator=gen, dtype=torch.float64)
    y = torch.rand(3, *g.sinogram_shape, generator=gen, dtype=torch.float64)
    lhs, rhs = float((p.A(x) * y).sum()), float((x * p.A_adjoint(y)).sum())
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)
    # the sparse system matrix is the same operator
    m = p.system_matrix("cpu", torch.float64)
    assert torch.allclose(m.A(x), p.A(x), rtol=1e-9, atol=1e-9)


def test_fan_projection_of_a_disc_is_its_chord_length():
    """A centred disc of radius r: every ray at distance t from the axis crosses a chord 2 sqrt(r^2 - t^2)."""
    g = fan(n=128, px=0.25, views=8, det=101, spacing=0.4, so=100.0, sd=180.0)
    img, _, _ = disc(128, 0.25, 0, 0, r=10.0, mu=1.0)
    sino = FanBeamProjector(g).A(img)
    gamma = g.fan_angles()
    t = g.source_origin * torch.sin(gamma)
    chord = 2 * torch.sqrt((10.0**2 - t**2).clamp_min(0))
    inner = t.abs() < 9.0
    rel = (sino[:, inner] - chord[inner]) / chord[inner]
    # within the pixelation of the disc's edge (0.25 mm pixels): 1.8 % at most, 0.4 % on average
    assert float(rel.abs().max()) < 0.02 and float(rel.abs().mean()) < 0.006


def test_fan_fbp_gives_the_discs_attenuation():
    g = fan()
    img, xx, yy = disc(96, 0.5)
    rec = FanBeamProjector(g).fbp(FanBeamProjector(g).A(img[None]))[0]
    inside = ((xx - 4) ** 2 + (yy + 3) ** 2) < 9**2
    outside = ((xx - 4) ** 2 + (yy + 3) ** 2) > 15**2
    assert abs(float(rec[inside].mean()) - 0.02) < 2e-4
    assert float(rec[outside].abs().mean()) < 5e-4


def test_fan_fbp_of_shepp_logan():
    """The Shepp-Logan phantom (scikit-image's, 128 x 128, 1 mm pixels), 720 views over 360
    degrees: 28.6 dB PSNR measured; at least 27 dB here. The parallel-beam FBP of the same
    phantom reaches about the same (the fan-beam discretisation costs nothing)."""
    from skimage.data import shepp_logan_phantom
    from skimage.metrics import peak_signal_noise_ratio
    from skimage.transform import resize

    ph = torch.from_numpy(resize(shepp_logan_phantom(), (128, 128), anti_aliasing=True)) * 0.02
    g = fan(n=128, px=1.0, views=720, det=260, spacing=0.9, so=300.0, sd=500.0)
    p = FanBeamProjector(g)
    rec = p.fbp(p.A(ph[None]))[0]
    psnr = peak_signal_noise_ratio(ph.numpy(), rec.numpy(), data_range=float(ph.max()))
    assert psnr > 27.0, psnr


def test_parker_weights_add_up_to_one_over_each_line():
    gamma = torch.linspace(-0.2, 0.2, 9, dtype=torch.float64)  # symmetric: column -j is -gamma
    arc = math.pi + 2 * 0.25
    for b in (0.05, 0.2, 0.3, 0.6):
        for j, g in enumerate(gamma):
            other = b + math.pi + 2 * float(g)  # the same line seen from the other side, at -gamma
            w = parker_weights(torch.tensor([0.0, b, other], dtype=torch.float64), gamma, arc)
            assert abs(float(w[1, j] + w[2, len(gamma) - 1 - j]) - 1.0) < 1e-9


def test_short_scan_fbp_with_parker_weights():
    g0 = fan(n=96, views=4)
    arc = math.degrees(math.pi + 2 * g0.half_fan) + 2.0
    angles = tuple(np.arange(0, arc, 0.5))
    g = FanBeamGeometry(g0.image_shape, g0.pixel_spacing, angles, g0.n_det, g0.detector_spacing, g0.source_origin,
                        g0.source_detector)
    img, xx, yy = disc(96, 0.5)
    p = FanBeamProjector(g)
    rec = p.fbp(p.A(img[None]))[0]
    inside = ((xx - 4) ** 2 + (yy + 3) ** 2) < 9**2
    assert abs(float(rec[inside].mean()) - 0.02) < 3e-4
    assert float(rec[inside].std()) < 1e-3


def test_rebinning_to_parallel_beam_agrees_with_fan_fbp():
    g = fan()
    img, _, _ = disc(96, 0.5)
    img = img + disc(96, 0.5, -8, 6, 4, 0.01)[0]
    sino = FanBeamProjector(g).A(img[None])
    fan_rec = FanBeamProjector(g).fbp(sino)[0]
    par_sino, par_geom = rebin_to_parallel(sino, g)
    assert isinstance(par_geom, ParallelBeamGeometry) and par_sino.shape[-2:] == par_geom.sinogram_shape
    par_rec = ParallelBeamProjector(par_geom).fbp(par_sino)[0]
    corr = float(np.corrcoef(fan_rec.ravel(), par_rec.ravel())[0, 1])
    assert corr > 0.999
    assert float((par_rec - fan_rec).norm() / fan_rec.norm()) < 0.05
    with pytest.raises(InputError, match="all around"):
        rebin_to_parallel(sino[..., :300, :], select_views(g, range(300)))


def test_fan_turns_into_parallel_beam_far_away():
    """With the source far away, fan-beam projections approach parallel-beam ones."""
    par = ParallelBeamGeometry((48, 48), (1.0, 1.0), n_views=12, angular_range=360.0, n_detectors=71,
                               detector_spacing=1.0)
    far = FanBeamGeometry((48, 48), (1.0, 1.0), tuple(np.arange(12) * 30.0), 71, 1.0, 1e6, 1e6 + 1)
    img = disc(48, 1.0, 3, 2, 10, 1.0)[0][None]
    a, b = ParallelBeamProjector(par).A(img), FanBeamProjector(far).A(img)
    assert float((a - b).abs().max()) < 1e-3 * float(a.abs().max()) + 1e-4


def test_view_weights_and_arbitrary_parallel_angles():
    w = view_weights(torch.deg2rad(torch.arange(0, 180, 3.0, dtype=torch.float64)))
    assert torch.allclose(w, torch.full_like(w, math.radians(3.0)))
    full = view_weights(torch.deg2rad(torch.arange(0, 360.5, 0.5, dtype=torch.float64)))  # 0 and 360 both
    assert abs(float(full.sum()) - 2 * math.pi) < 1e-9 and abs(float(full[0] + full[-1]) - math.radians(0.5)) < 1e-12
    even = sparse_view_geometry((40, 40), (1.0, 1.0), 30, 720, 180.0)
    listed = ParallelBeamGeometry((40, 40), (1.0, 1.0), n_views=30, n_detectors=even.n_det,
                                  angles_deg=tuple(float(a) for a in torch.rad2deg(even.angles())))
    img = disc(40, 1.0, 2, 1, 9, 0.02)[0][None]
    pe, pl = ParallelBeamProjector(even), ParallelBeamProjector(listed)
    assert torch.allclose(pe.fbp(pe.A(img)), pl.fbp(pl.A(img)), atol=1e-6)


def test_select_views_and_projector_for():
    g = fan(views=720)
    sub = select_views(g, range(0, 720, 12))
    assert sub.n_views == 60 and sub.angles_deg[1] == 6.0 and isinstance(projector_for(sub), FanBeamProjector)
    par = sparse_view_geometry((32, 32), (1.0, 1.0), 60, 720, 180.0)
    assert select_views(par, [0, 5]).n_views == 2 and type(projector_for(par)) is ParallelBeamProjector


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sd": 100.0}, "must exceed"),
    ({"so": -5.0}, "positive"),
    ({"det": 0}, "detector count"),
    ({"n": 1000, "px": 1.0}, "reaches the source"),
])
def test_fan_geometry_checks(kwargs, message):
    with pytest.raises(InputError, match=message):
        fan(**kwargs)


def test_gradient_and_divergence_are_negative_adjoints():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 9, 11, generator=gen, dtype=torch.float64)
    g = torch.rand(2, 2, 9, 11, generator=gen, dtype=torch.float64)
    assert abs(float((gradient(x) * g).sum() + (x * divergence(g)).sum())) < 1e-12


class _Identity:
    image_shape = (16, 16)

    def A(self, x):  # noqa: N802
        return x

    def A_adjoint(self, y):  # noqa: N802
        return y

    def norm(self, device=None):
        return 1.0


def test_tv_limits_by_hand():
    """With A = I: a huge TV weight flattens the image to its mean (TV 0, the closest constant);
    weight 0 returns the data (clipped at 0 when non-negative)."""
    gen = torch.Generator().manual_seed(2)
    y = torch.rand(1, 16, 16, generator=gen, dtype=torch.float64) - 0.2
    flat = tv_least_squares(_Identity(), y, 1e3, 2000, nonnegative=False)
    assert torch.allclose(flat, y.mean().expand_as(flat), atol=2e-3)
    same = tv_least_squares(_Identity(), y, 0.0, 200)
    assert torch.allclose(same, y.clamp_min(0), atol=1e-6)


def test_tv_beats_fbp_on_a_sparse_fan_scan():
    g = fan(n=64, px=0.75, views=30, det=150)
    img = disc(64, 0.75, 2, 1, 15, 0.02)[0] + disc(64, 0.75, -5, 4, 4, 0.01)[0]
    p = FanBeamProjector(g)
    y = p.A(img[None])
    fbp = p.fbp(y)[0]
    tv = tv_least_squares(p, y, 2e-4, 300)[0]
    assert float((tv - img).norm()) < 0.5 * float((fbp - img).norm())
