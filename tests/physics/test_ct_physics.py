"""CT physics: matched projector pair, FBP accuracy and agreement with scikit-image, noise
statistics, HU conversion and the checks on bad acquisitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, radon, resize

from bundle.physics import ct, noise
from bundle.physics.ct_matrix import SystemMatrix
from bundle.transforms.ct import (
    CTAcquisition, CTDataConsistency, HounsfieldWindowd, SimulateCTd, check_hu, hu_to_unit, unit_to_hu,
)
from bundle.errors import InputError


def smooth_phantom(h: int = 129, w: int = 129) -> torch.Tensor:
    """Gaussian blobs: band-limited, so FBP can reproduce it almost exactly."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64), torch.linspace(-1, 1, w, dtype=torch.float64),
                          indexing="ij")
    img = torch.zeros(h, w, dtype=torch.float64)
    for cx, cy, s, a in [(0, 0, 0.35, 1.0), (0.25, -0.1, 0.1, 0.5), (-0.3, 0.2, 0.08, -0.3), (0.05, 0.35, 0.05, 0.4)]:
        img += a * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s**2))
    return img


def op(geom: ct.ParallelBeamGeometry) -> ct.ParallelBeamProjector:
    """A fresh projector (its own caches) of `geom`."""
    return ct.ParallelBeamProjector(geom)


def psnr(a: torch.Tensor, ref: torch.Tensor) -> float:
    return 10 * math.log10(float(ref.max()) ** 2 / float(((a - ref) ** 2).mean()))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shape,spacing,views", [((33, 33), (1.0, 1.0), 20), ((30, 41), (0.7, 1.2), 13)])
def test_backproject_is_the_adjoint_of_project(dtype, tol, shape, spacing, views):
    g = ct.ParallelBeamGeometry(shape, spacing, n_views=views)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, *shape, generator=gen, dtype=dtype)
    y = torch.randn(2, *g.sinogram_shape, generator=gen, dtype=dtype)
    lhs = float((op(g).A(x) * y).sum(dtype=torch.float64))
    rhs = float((x * op(g).A_adjoint(y)).sum(dtype=torch.float64))
    assert abs(lhs - rhs) <= tol * abs(lhs)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shape,spacing,views", [((33, 33), (1.0, 1.0), 20), ((30, 41), (0.7, 1.2), 13)])
def test_system_matrix_is_the_projector_pair(dtype, tol, shape, spacing, views):
    """The explicit sparse matrix gives `project` and `backproject` (grid_sample and its backward
    kernel, a second implementation) to float rounding, its transpose is its adjoint, and its
    entries are those of the matrix built column by column from basis images."""
    g = ct.sparse_view_geometry(shape, spacing, views, 720)
    m = SystemMatrix(op(g), dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, *shape, generator=gen, dtype=dtype)
    y = torch.randn(2, *g.sinogram_shape, generator=gen, dtype=dtype)
    for got, ref in ((m.A(x), op(g).A(x)), (m.A_adjoint(y), op(g).A_adjoint(y))):
        assert got.shape == ref.shape and got.dtype == dtype
        assert float((got - ref).abs().max()) <= tol * float(ref.abs().max())
    lhs = float((m.A(x) * y).sum(dtype=torch.float64))
    rhs = float((x * m.A_adjoint(y)).sum(dtype=torch.float64))
    assert abs(lhs - rhs) <= tol * abs(lhs)
    if dtype == torch.float64:
        dense = _explicit_matrix(g)
        assert torch.allclose(m.matrix.to_dense(), dense, rtol=0, atol=1e-12)
        assert torch.allclose(m.transpose.to_dense(), dense.T, rtol=0, atol=1e-12)
        # one entry per (ray, pixel) at most (grid_sample leaves a few 1e-17 where the matrix has none)
        assert 0.99 * int((dense != 0).sum()) <= m.matrix._nnz() <= int((dense != 0).sum())
    with pytest.raises(InputError, match="does not match the geometry"):
        m.A_adjoint(y[..., :-1])


@pytest.mark.parametrize("parts", [1, 3])
def test_projector_split_in_parts_and_differentiable(parts, monkeypatch):
    """The CPU projector splits its sampling grids in parts (threads); any split, with the padding
    it needs (3 parts of 13 x 47 rays, of 13 views of pixels), gives the single-part operators, and
    the back-projector's gradient with respect to the sinogram is the projector (its adjoint)."""
    g = ct.ParallelBeamGeometry((30, 41), (0.7, 1.2), n_views=13)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 30, 41, generator=gen, dtype=torch.float64)
    y = torch.randn(3, *g.sinogram_shape, generator=gen, dtype=torch.float64)
    monkeypatch.setattr(ct, "_grid_parts", lambda device: 1)
    ref = op(g).A(x), op(g).A_adjoint(y), op(g).interpolate_backproject(y)
    monkeypatch.setattr(ct, "_grid_parts", lambda device: parts)
    got = op(g).A(x), op(g).A_adjoint(y), op(g).interpolate_backproject(y)
    for a, b in zip(got, ref):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    y.requires_grad_(True)
    (grad,) = torch.autograd.grad((op(g).A_adjoint(y) * x).sum(), y)
    assert torch.allclose(grad, op(g).A(x), rtol=1e-10, atol=1e-10)
    small = ct.ParallelBeamGeometry((9, 7), (1.0, 0.8), n_views=4)  # against finite differences
    assert torch.autograd.gradcheck(lambda s: op(small).A_adjoint(s),
                                    (torch.randn(2, *small.sinogram_shape, generator=gen, dtype=torch.float64,
                                                 requires_grad=True),))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path of the projector pair")
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_projector_pair_on_cuda_matches_cpu(dtype, tol):
    """On CUDA the grids are not split and the back-projector calls the backward kernel with a real
    zero input: the same operators as on the CPU, still adjoint, FBP and gradient included."""
    g = ct.ParallelBeamGeometry((30, 41), (0.7, 1.2), n_views=13)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 30, 41, generator=gen, dtype=dtype)
    y = torch.randn(3, *g.sinogram_shape, generator=gen, dtype=dtype)
    cpu = op(g).A(x), op(g).A_adjoint(y), op(g).fbp(y), op(g).interpolate_backproject(y)
    xc, yc = x.cuda(), y.cuda()
    gpu = op(g).A(xc), op(g).A_adjoint(yc), op(g).fbp(yc), op(g).interpolate_backproject(yc)
    for a, b in zip(gpu, cpu):
        assert a.device.type == "cuda" and torch.allclose(a.cpu(), b, rtol=tol, atol=tol * float(b.abs().max()))
    lhs, rhs = float((gpu[0] * yc).sum(dtype=torch.float64)), float((xc * gpu[1]).sum(dtype=torch.float64))
    assert abs(lhs - rhs) <= tol * abs(lhs)
    yc.requires_grad_(True)
    (grad,) = torch.autograd.grad((op(g).A_adjoint(yc) * xc).sum(), yc)
    assert torch.allclose(grad, gpu[0], rtol=tol, atol=tol * float(gpu[0].abs().max()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path of the system matrix")
def test_system_matrix_on_cuda_matches_cpu():
    """Built on CUDA (the sorts run there), the matrix gives the CPU's operators."""
    g = ct.sparse_view_geometry((30, 41), (0.7, 1.2), 13, 720)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 30, 41, generator=gen, dtype=torch.float64)
    y = torch.randn(2, *g.sinogram_shape, generator=gen, dtype=torch.float64)
    cpu, gpu = SystemMatrix(op(g), dtype=torch.float64), SystemMatrix(op(g), "cuda", torch.float64)
    assert torch.allclose(gpu.A(x.cuda()).cpu(), cpu.A(x), rtol=1e-10, atol=1e-10)
    assert torch.allclose(gpu.A_adjoint(y.cuda()).cpu(), cpu.A_adjoint(y), rtol=1e-10, atol=1e-10)


def test_projection_of_a_disc_is_its_chord_length():
    # a uniform disc of radius r (mm) and value 1: line integral 2 sqrt(r^2 - t^2) at every angle
    n, s, r = 201, 0.5, 40.0
    c = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * s
    disc = ((c[:, None] ** 2 + c[None, :] ** 2) <= r**2).double()
    g = ct.ParallelBeamGeometry((n, n), (s, s), n_views=8)
    p = op(g).A(disc)
    t = (torch.arange(g.n_det, dtype=torch.float64) - (g.n_det - 1) / 2) * g.det_spacing
    expected = 2 * torch.sqrt((r**2 - t**2).clamp_min(0))
    inner = t.abs() < r - 2  # the chord's slope is infinite at the rim of the pixelated disc
    assert float((p - expected)[:, inner].abs().max()) < 1.0  # measured 0.65 mm of a chord up to 80 mm
    assert float((p - expected).abs().mean()) < 0.3  # measured 0.14 mm


@pytest.mark.parametrize("shape,spacing", [((129, 129), (1.0, 1.0)), ((129, 101), (0.7, 0.9))])
def test_full_view_fbp_reproduces_a_phantom(shape, spacing):
    img = smooth_phantom(*shape)
    g = ct.ParallelBeamGeometry(shape, spacing, n_views=360)
    rec = op(g).fbp(op(g).A(img))
    assert psnr(rec, img) > 55.0  # measured 67 dB (square) and 60 dB (anisotropic, non-square)


def test_fbp_of_a_real_ct_slice_in_hu():
    # water-filled disc in air: FBP returns 0 HU inside and -1000 HU outside (scaling in physical units)
    n, s = 129, 0.8
    c = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * s
    rr = torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2)
    hu = torch.where(rr < 35, 0.0, -1000.0).double()
    g = ct.ParallelBeamGeometry((n, n), (s, s), n_views=360)
    rec = ct.mu_to_hu(op(g).fbp(op(g).A(ct.hu_to_mu(hu))))
    assert abs(float(rec[rr < 25].mean())) < 5.0
    assert abs(float(rec[rr > 45].mean()) + 1000.0) < 5.0


def _odd_phantom(n: int = 101) -> np.ndarray:
    img = resize(shepp_logan_phantom(), (n, n)).astype(np.float64)
    img[20:30, 60:80] = 1.0  # break the symmetry, so a wrong angle convention shows
    return img


def test_projector_agrees_with_scikit_image_radon():
    img = _odd_phantom()
    theta = np.arange(0.0, 180.0, 1.0)
    reference = radon(img, theta, circle=False)  # (detectors, views)
    g = ct.ParallelBeamGeometry(img.shape, (1.0, 1.0), n_views=180, n_detectors=reference.shape[0])
    ours = op(g).A(torch.from_numpy(img)).numpy().T
    rel = np.linalg.norm(ours - reference) / np.linalg.norm(reference)
    assert rel < 0.01  # measured 0.4 %: both sample along rays with bilinear interpolation


@pytest.mark.parametrize("filter_name", ct.FILTERS)
def test_fbp_agrees_with_scikit_image_iradon(filter_name):
    img = _odd_phantom()
    theta = np.arange(0.0, 180.0, 1.0)
    sino = radon(img, theta, circle=False)
    g = ct.ParallelBeamGeometry(img.shape, (1.0, 1.0), n_views=180, n_detectors=sino.shape[0])
    ours = op(g).fbp(torch.from_numpy(sino.T.copy()), filter_name).numpy()
    reference = iradon(sino, theta, circle=False, filter_name=filter_name)
    # same filter and same pixel-driven linear interpolation: equal to rounding
    assert np.allclose(ours, reference, atol=1e-9)


def test_fbp_filters_are_ordered_by_smoothing():
    # every window attenuates high frequencies relative to the ramp: noise falls from ramp to hann
    g = ct.ParallelBeamGeometry((65, 65), (1.0, 1.0), n_views=90)
    noise = torch.randn(1, *g.sinogram_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stds = {f: float(op(g).fbp(noise, f).std()) for f in ("ramp", "shepp-logan", "cosine", "hann")}
    assert stds["ramp"] > stds["shepp-logan"] > stds["cosine"] > stds["hann"]


def test_sparse_view_angles_are_a_subset_of_the_full_set():
    full = ct.ParallelBeamGeometry((9, 9), n_views=720).angles()
    sparse = ct.sparse_view_geometry((9, 9), (1.0, 1.0), 60, 720).angles()
    assert len(sparse) == 60
    assert torch.allclose(sparse, full[::12])


def test_hounsfield_conversion():
    hu = torch.tensor([-1000.0, 0.0, 1000.0, -1024.0])
    mu = ct.hu_to_mu(hu)
    assert torch.allclose(mu, torch.tensor([0.0, ct.MU_WATER, 2 * ct.MU_WATER, 0.0]))
    assert torch.allclose(ct.mu_to_hu(mu[:3]), hu[:3])
    assert torch.allclose(unit_to_hu(hu_to_unit(hu[:3])), hu[:3], atol=1e-3)


@pytest.mark.parametrize("i0", [1e2, 1e4, 1e6])
def test_poisson_statistics_of_transmitted_counts(i0):
    p = torch.full((200_000,), 1.5, dtype=torch.float64)
    counts = noise.transmitted_counts(p, i0, generator=torch.Generator().manual_seed(1))
    expected = i0 * math.exp(-1.5)
    n = p.numel()
    assert abs(float(counts.mean()) - expected) < 5 * math.sqrt(expected / n)
    assert abs(float(counts.var()) / expected - 1) < 5 * math.sqrt(2 / n)  # variance = mean
    assert torch.equal(counts, counts.round())


def test_electronic_noise_adds_its_variance_and_log_stays_finite():
    p = torch.full((200_000,), 2.0, dtype=torch.float64)
    i0, sigma = 1e3, 10.0
    counts = noise.transmitted_counts(p, i0, sigma, torch.Generator().manual_seed(2))
    expected = i0 * math.exp(-2.0)
    assert abs(float(counts.var()) / (expected + sigma**2) - 1) < 0.03
    # a very low dose through a thick object: zero and negative counts, still finite line integrals
    thick = torch.full((10_000,), 9.0, dtype=torch.float64)
    noisy = noise.low_dose_line_integrals(thick, 100.0, 5.0, torch.Generator().manual_seed(3))
    assert torch.isfinite(noisy).all()
    assert float(noisy.max()) <= math.log(100.0) + 1e-9  # counts floored at 1


def test_lower_dose_gives_noisier_fbp():
    unit = hu_to_unit(torch.where(torch.rand(1, 65, 65, generator=torch.Generator().manual_seed(0)) > -1, 0.0, 0.0))
    stds = []
    for i0 in (1e6, 1e4):
        acq = CTAcquisition(views=90, full_views=180, incident_photons=i0)
        clean = CTAcquisition(views=90, full_views=180)
        diff = acq(unit, (1.0, 1.0), torch.Generator().manual_seed(0)) - clean(unit, (1.0, 1.0))
        stds.append(float(diff.std()))
    assert stds[1] > 5 * stds[0]  # noise std scales as 1 / sqrt(I0): 10x expected


def test_simulate_ctd_is_deterministic_per_slice():
    unit = hu_to_unit(torch.zeros(1, 33, 33))
    sim = SimulateCTd("image", CTAcquisition(views=30, full_views=180, incident_photons=1e4))
    a = sim({"image": unit, "slice_id": "a:1", "pixel_spacing": torch.tensor([1.0, 1.0])})
    b = sim({"image": unit, "slice_id": "a:1", "pixel_spacing": torch.tensor([1.0, 1.0])})
    c = sim({"image": unit, "slice_id": "a:2", "pixel_spacing": torch.tensor([1.0, 1.0])})
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    assert torch.equal(a["label"], unit) and a["views"] == 30


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"views": 0}, "at least 1"),
        ({"views": 1000}, "full acquisition has only 720"),
        ({"views": 60, "incident_photons": -5.0}, "must be positive"),
        ({"views": 60, "incident_photons": 1e4, "electronic_noise": -1.0}, ">= 0"),
        ({"views": 60, "filter_name": "triangle"}, "unknown FBP filter"),
    ],
)
def test_bad_acquisitions_are_one_line_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        CTAcquisition(**kwargs)


def test_negative_photon_counts_rejected():
    with pytest.raises(InputError, match="must be positive"):
        noise.transmitted_counts(torch.zeros(3), -1.0)


def test_sinogram_shape_must_match_the_geometry():
    g = ct.ParallelBeamGeometry((33, 33), n_views=20)
    with pytest.raises(InputError, match=r"does not match the geometry.*\(\.\.\., 20, 47\)"):
        op(g).fbp(torch.zeros(19, 47))
    with pytest.raises(InputError, match="NaN"):
        op(g).fbp(torch.full((20, 47), float("nan")))


def test_non_hu_volume_error_or_warning(caplog):
    unit_volume = torch.rand(8, 8, 4)
    with pytest.raises(InputError, match="vol.nii: not in Hounsfield units"):
        check_hu(unit_volume, "vol.nii", "error")
    check_hu(unit_volume, "vol.nii", "warn")
    assert "not in Hounsfield units" in caplog.text
    check_hu(unit_volume, "vol.nii", "off")
    # stored values without the rescale intercept (0..4095) are caught too
    with pytest.raises(InputError, match="rescale intercept"):
        check_hu(torch.arange(0, 4000.0).reshape(40, 100), "raw.dcm", "error")
    check_hu(torch.tensor([-1000.0, -100.0, 40.0, 1200.0]), "ct.nii", "error")  # a real range passes
    with pytest.raises(InputError, match="unknown hu_check"):
        HounsfieldWindowd("image", hu_check="maybe")


def _explicit_matrix(geom) -> torch.Tensor:
    """A as a dense (V*D, H*W) float64 matrix: the projection of each pixel's indicator."""
    n = geom.image_shape[0] * geom.image_shape[1]
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *geom.image_shape)
    return op(geom).A(basis).reshape(n, -1).T


def test_sinogram_consistency_solves_the_regularised_least_squares_problem():
    """Conjugate gradients against a direct solve of (A^T A + lam I) x = A^T y + lam x0 with the
    explicit matrix (a second implementation), on a sparse-view 12 x 12 problem."""
    geom = ct.sparse_view_geometry((12, 12), (1.0, 1.0), 6, 72)
    a = _explicit_matrix(geom)
    truth = smooth_phantom(12, 12)
    y = op(geom).A(truth)
    x0 = torch.zeros_like(truth) + 0.2
    weight = 0.01
    lam = weight * op(geom).norm()
    assert lam / weight == pytest.approx(float(torch.linalg.eigvalsh(a.T @ a)[-1]), rel=1e-2)
    direct = torch.linalg.solve(a.T @ a + lam * torch.eye(144, dtype=torch.float64), a.T @ y.flatten() + lam * x0.flatten())
    cg = ct.sinogram_consistency(x0, y, op(geom), weight, iterations=144)
    assert cg.dtype == torch.float64
    np.testing.assert_allclose(cg.flatten().numpy(), direct.numpy(), atol=1e-6)


def test_sinogram_consistency_keeps_a_consistent_image_and_moves_towards_the_scan():
    geom = ct.sparse_view_geometry((48, 48), (0.8, 0.8), 30, 720)
    truth = smooth_phantom(48, 48).float()[None].repeat(2, 1, 1)
    y = op(geom).A(truth)
    same = ct.sinogram_consistency(truth, y, op(geom), 1e-3, 12)  # already consistent: a fixed point
    assert float((same - truth).abs().max()) < 1e-4
    blurred = torch.nn.functional.avg_pool2d(truth[:, None], 5, 1, 2)[:, 0] * 0.9  # a wrong start
    fixed = ct.sinogram_consistency(blurred, y, op(geom), 1e-3, 12)
    for before, after, ref, sino in zip(blurred, fixed, truth, y):  # each slice on its own
        assert psnr(after, ref) > psnr(before, ref) + 10
        assert float((op(geom).A(after) - sino).norm()) < 0.05 * float((op(geom).A(before) - sino).norm())
    heavy = ct.sinogram_consistency(blurred, y, op(geom), 1e4, 12)  # a huge weight keeps the start
    assert float((heavy - blurred).abs().max()) < 1e-3 * float(blurred.abs().max())
    assert torch.equal(ct.sinogram_consistency(blurred, y, op(geom), 1e-3, 0), blurred)


def test_sinogram_consistency_with_the_system_matrix_equals_the_sampling_operators(monkeypatch):
    """Data consistency builds the projector's sparse system matrix once the work done with it
    repays the build (slices x (iterations + 1), counted over calls, >= MATRIX_MIN_WORK), within
    its memory bound and without a gradient through the solve; the solution is the one of the
    sampling operators in every case (in float64 the operators agree to 1e-12, test above; the 12
    conjugate-gradient steps amplify that to ~2e-9)."""
    geom = ct.sparse_view_geometry((40, 36), (0.9, 1.1), 24, 720)
    truth = smooth_phantom(40, 36)[None].repeat(4, 1, 1)
    y = op(geom).A(truth)
    x0 = torch.nn.functional.avg_pool2d(truth[:, None], 5, 1, 2)[:, 0] * 0.9
    assert 2 * 13 < ct.MATRIX_MIN_WORK <= 3 * 13  # the default: built at the third slice at 12 iterations
    p = op(geom)
    singles = []
    for i in range(3):  # slice by slice, as the evaluator calls it
        assert not p._matrices
        singles.append(ct.sinogram_consistency(x0[i:i + 1], y[i:i + 1], p, 1e-3, 12))
    assert len(p._matrices) == 1
    p = op(geom)
    four = ct.sinogram_consistency(x0, y, p, 1e-3, 12)  # one call with enough work
    assert len(p._matrices) == 1
    p.release()
    assert not p._matrices and p._norms  # the norm stays
    one, again = singles[0], singles[2]
    monkeypatch.setattr(ct, "MATRIX_MIN_WORK", 10**9)
    p = op(geom)
    sampled = ct.sinogram_consistency(x0, y, p, 1e-3, 12)
    assert not p._matrices
    scale = float(sampled.abs().max())
    for got, ref in ((four, sampled), (one, sampled[:1]), (again, sampled[2:3])):
        assert float((got - ref).abs().max()) < 1e-7 * scale
    monkeypatch.setattr(ct, "MATRIX_MIN_WORK", 1)
    x0.requires_grad_(True)  # a gradient through the solve: the sampling operators, which have one
    p = op(geom)
    graph = ct.sinogram_consistency(x0, y, p, 1e-3, 12)
    assert not p._matrices and graph.requires_grad
    assert float((graph.detach() - sampled).abs().max()) < 1e-12 * scale  # the same operators
    monkeypatch.setattr(ct, "MATRIX_BYTES", SystemMatrix.bytes_bound(geom) - 1)  # too large: not built
    assert op(geom).system_matrix(dtype=torch.float64) is None
    bound = SystemMatrix.bytes_bound(geom)
    built = SystemMatrix(op(geom), dtype=torch.float64)
    assert built.matrix._nnz() * 8 * 2 <= bound  # the bound holds


def test_system_matrix_failure_falls_back_to_the_sampling_operators(monkeypatch):
    """Where the sparse matrices cannot be built or applied on a device (out of memory, a torch
    build without them), data consistency warns once and keeps the sampling operators."""
    geom = ct.sparse_view_geometry((24, 28), (1.0, 0.9), 16, 720)
    truth = smooth_phantom(24, 28)[None].repeat(4, 1, 1)
    y = op(geom).A(truth)
    x0 = truth * 0.9
    monkeypatch.setattr(ct, "MATRIX_MIN_WORK", 10**9)
    sampled = ct.sinogram_consistency(x0, y, op(geom), 1e-3, 12)

    def broken(self, image):
        raise RuntimeError("CUDA error: operation not supported\nmore detail")

    monkeypatch.setattr(ct, "MATRIX_MIN_WORK", 1)
    monkeypatch.setattr(SystemMatrix, "A", broken)
    p = op(geom)
    with pytest.warns(RuntimeWarning, match=r"no sparse system matrix on cpu \(CUDA error: operation not supported\)"):
        got = ct.sinogram_consistency(x0, y, p, 1e-3, 12)
    assert torch.equal(got, sampled) and not p._matrices and p._failed_devices == {"cpu"}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per device: no second build, no second warning
        assert torch.equal(ct.sinogram_consistency(x0, y, p, 1e-3, 12), sampled)


@pytest.mark.parametrize("weight,iterations,message", [(-1.0, 12, "weight must be >= 0"),
                                                       (1e-3, -2, "whole number >= 0"),
                                                       (1e-3, 2.5, "whole number >= 0")])
def test_sinogram_consistency_bad_settings(weight, iterations, message):
    geom = ct.sparse_view_geometry((16, 16), (1.0, 1.0), 8, 72)
    with pytest.raises(InputError, match=message):
        ct.sinogram_consistency(torch.zeros(16, 16), torch.zeros(geom.sinogram_shape), op(geom), weight, iterations)
    with pytest.raises(InputError, match=message.replace("weight", "dc_weight").replace("whole", "dc_iterations must be a whole")):
        CTDataConsistency(CTAcquisition(views=8, full_views=72), weight, iterations)


def test_ct_data_consistency_on_the_window_scale_and_through_the_inferer():
    from bundle.inference.ct import CTConsistencyInferer

    acq = CTAcquisition(views=24, full_views=96)
    hu = torch.full((2, 40, 40), -1000.0)
    hu[:, 8:32, 10:30] = 40.0
    hu[1, 15:20, 15:20] = 900.0
    unit = hu_to_unit(hu)
    sino, geom = acq.sinogram(unit, (0.9, 0.9))
    dc = CTDataConsistency(acq, 1e-3, 12)
    np.testing.assert_allclose(dc(unit, sino, (0.9, 0.9)).numpy(), unit.numpy(), atol=1e-4)  # a fixed point
    fbp = acq.reconstruct(sino, geom)
    inferer = CTConsistencyInferer(dc)
    identity = torch.nn.Identity()
    out = inferer(fbp[:, None], identity, sinogram=sino, pixel_spacing=torch.tensor([[0.9, 0.9]] * 2))
    assert out.shape == (2, 1, 40, 40)
    for rec, before, ref in zip(out[:, 0], fbp, unit):  # FBP made consistent with its sparse scan
        assert psnr(rec, ref) > psnr(before, ref)
    torch.testing.assert_close(inferer(fbp[:, None], identity), fbp[:, None])  # no scan: the network alone
    # slices of different spacing are solved one by one, each with its own geometry
    mixed = inferer(fbp[:, None], identity, sinogram=sino, pixel_spacing=torch.tensor([[0.9, 0.9], [0.9, 0.9001]]))
    # (alone or in a batch of two, the sparse products sum in another order: float32 rounding,
    # which 12 CG steps amplify to ~1e-5 of the window, 0.06 HU)
    torch.testing.assert_close(mixed[0], out[0], rtol=0, atol=1e-4)
    dc.set(1e-3, 0)
    torch.testing.assert_close(inferer(fbp[:, None], identity, sinogram=sino, pixel_spacing=torch.tensor([[0.9, 0.9]] * 2)),
                               fbp[:, None])
