"""FDG phantoms from T1 heads: lesions get the contrast asked for, inside the region; classes,
activity and mu values of a synthetic head whose tissues are known; the slice dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bundle.data.pet_phantoms import (
    ACTIVITY,
    BONE,
    CSF,
    GM,
    SOFT,
    WM,
    PETPhantomSlices,
    activity_from_classes,
    insert_lesions,
    mu_from_classes,
    tissue_classes,
)
from bundle.errors import InputError


def test_lesions_have_the_contrast_asked_for():
    g = torch.Generator().manual_seed(0)
    act = 1.0 + 0.1 * torch.rand(64, 64, generator=g)
    region = torch.zeros(64, 64, dtype=torch.bool)
    region[10:54, 10:54] = True
    for contrast in (2.5, 0.3):
        out, placed = insert_lesions(act, region, 3, (2.0, 3.0), (contrast, contrast), g)
        assert len(placed) == 3
        changed = out != act
        for les in placed:
            cy, cx = les["center"]
            assert region[int(cy), int(cx)]
            yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
            d = (yy - cy) ** 2 + (xx - cx) ** 2 <= les["radius"] ** 2
            # the disc holds contrast x the mean activity it held before, and lies inside the region
            assert float(out[d].mean()) == pytest.approx(contrast * float(act[d].mean()), rel=1e-5)
            assert bool(region[d].all())
        assert bool(changed.sum() > 0) and not bool(changed[~region].any())


def synthetic_head(n=64, depth=12):
    """Concentric shells per slice: air, scalp (bright-ish), skull (dark), CSF (dark), grey (mid),
    white (bright), and ventricles (CSF) inside, on a T1-like scale, with known labels."""
    c = np.arange(n) - (n - 1) / 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    r = np.sqrt(xx**2 + (yy / 1.1) ** 2)
    t1 = np.zeros((n, n), np.float32)
    labels = np.zeros((n, n), np.uint8)
    for radius, value, label in ((29, 700, SOFT), (26, 80, BONE), (23, 150, CSF), (21, 600, GM), (15, 1100, WM),
                                 (5, 150, CSF)):
        t1[r <= radius], labels[r <= radius] = value, label
    rng = np.random.default_rng(0)
    vol = np.repeat(t1[..., None], depth, -1) * (1 + 0.02 * rng.standard_normal((n, n, depth)))
    lab = np.repeat(labels[..., None], depth, -1)
    pad = ((0, 0), (0, 0), (4, 4))  # air above and below, as in a real head volume
    return np.pad(vol, pad).astype(np.float32), np.pad(lab, pad)


def test_classes_activity_and_mu_of_a_known_head():
    t1, labels = synthetic_head()
    classes = tissue_classes(t1)
    inner = labels != labels  # the shells' interiors, away from boundaries
    from scipy import ndimage as ndi

    for lab in (SOFT, GM, WM):
        inner |= ndi.binary_erosion(labels == lab, iterations=1)
    agree = (classes == labels)[inner].mean()
    assert agree > 0.95
    assert (classes[labels == 0] == 0).mean() > 0.99
    cls = torch.from_numpy(labels[..., 9])
    act = activity_from_classes(cls, variation=0.0)
    for lab, value in ACTIVITY.items():
        if (cls == lab).any():
            assert torch.allclose(act[cls == lab], torch.tensor(value))
    mu = mu_from_classes(cls)
    assert float(mu[cls == BONE].unique()) == pytest.approx(0.0172)
    assert float(mu[cls == GM].unique()) == pytest.approx(0.0096)
    assert float(mu[cls == 0].max()) == 0.0
    varied = activity_from_classes(cls, variation=0.1, generator=torch.Generator().manual_seed(0))
    ratio = varied[cls == WM] / ACTIVITY[WM]
    assert 0.05 < float(ratio.std()) < 0.15 and abs(float(ratio.mean()) - 1) < 0.05


def test_phantom_slices_dataset(tmp_path):
    import nibabel as nib

    t1, _ = synthetic_head(n=64, depth=10)
    path = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(t1, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    ds = PETPhantomSlices([{"image": str(path)}], shape=(80, 80), count_fractions=(0.1, 0.25), min_brain=100,
                          random=False)
    item = ds[0]
    assert item["activity"].shape == (1, 80, 80) and item["mu"].shape == (1, 80, 80)
    assert item["seed"] >= 0 and item["count_fraction"] == 0.1
    assert torch.equal(ds[0]["activity"], item["activity"])  # validation items repeat
    # the lesion map marks exactly the pixels the lesions changed (the same slice without lesions)
    plain = PETPhantomSlices([{"image": str(path)}], shape=(80, 80), min_brain=100, random=False, lesions=(0, 0))
    many = PETPhantomSlices([{"image": str(path)}], shape=(80, 80), min_brain=100, random=False, lesions=(3, 3))
    for i in range(len(many)):
        changed = many[i]["activity"] != plain[i]["activity"]
        assert torch.equal(many[i]["lesion"].bool(), changed) and not plain[i]["lesion"].any()
    assert any(many[i]["lesion"].any() for i in range(len(many)))
    rnd = PETPhantomSlices([{"image": str(path)}], shape=(80, 80), min_brain=100, random=True)
    assert rnd[0]["seed"] == -1 and not torch.equal(rnd[0]["activity"], rnd[0]["activity"])
    with pytest.raises(InputError, match="count_fraction"):
        PETPhantomSlices([{"image": str(path)}], count_fractions=(0.0,))
    with pytest.raises(InputError, match="do not fit"):
        PETPhantomSlices([{"image": str(path)}], shape=(32, 32), min_brain=100)


def test_domain_randomised_phantoms_draw_within_their_ranges(tmp_path):
    """Training with `count_range`, `variation_range` and `grey_matter_range`: count fractions
    spread over the range (log-uniform: about half below the geometric middle), grey matter's
    activity (no variation, no lesions) inside its range and varying; validation items keep the
    fixed values; bad ranges stop with one line naming the option."""
    import nibabel as nib

    from bundle.data.pet_phantoms import GM

    t1, _ = synthetic_head(n=64, depth=10)
    path = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(t1, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    data = [{"image": str(path)}]
    ds = PETPhantomSlices(data, shape=(80, 80), min_brain=100, lesions=(0, 0), variation_range=(0.0, 0.0),
                          count_range=(0.04, 0.3), grey_matter_range=(3.2, 4.8))
    classes = ds.slices[0]["classes"]
    fractions, greys = [], []
    for _ in range(200):
        item = ds[0]
        fractions.append(item["count_fraction"])
        greys.append(float(item["activity"][0][classes == GM].mean()))
    f = np.asarray(fractions)
    assert f.min() >= 0.04 and f.max() <= 0.3 and f.max() / f.min() > 4
    assert 0.35 < float(np.mean(f < np.sqrt(0.04 * 0.3))) < 0.65
    g = np.asarray(greys)
    assert g.min() >= 3.2 - 1e-5 and g.max() <= 4.8 + 1e-5 and g.std() > 0.3
    fixed = PETPhantomSlices(data, shape=(80, 80), min_brain=100, lesions=(0, 0), random=False,
                             count_range=(0.04, 0.3), grey_matter_range=(3.2, 4.8), variation=0.0)
    assert fixed[0]["count_fraction"] == 0.1 and float(fixed[0]["activity"][0][classes == GM].mean()) == 4.0
    for name, bad in (("count_range", (0.3, 0.04)), ("variation_range", (0.1, 2.0)), ("grey_matter_range", "x")):
        with pytest.raises(InputError, match=name):
            PETPhantomSlices(data, shape=(80, 80), min_brain=100, **{name: bad})


def test_phantom_slices_carry_the_t1_they_were_made_from(tmp_path):
    import nibabel as nib

    from bundle.transforms.pet import anatomy_image

    t1, _ = synthetic_head(n=64, depth=10)
    path = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(t1, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    ds = PETPhantomSlices([{"image": str(path)}], shape=(80, 80), min_brain=100, random=False, anatomy=True)
    plain = PETPhantomSlices([{"image": str(path)}], shape=(80, 80), min_brain=100, random=False)
    assert "mr" not in plain[0]
    scale = float(np.percentile(t1, 99.5))
    for i in (0, len(ds) - 1):
        item = ds[i]
        z = int(item["slice_id"].split(":")[1])
        assert item["mr"].shape == (1, 80, 80)
        # the slice's T1 divided by the volume's 99.5th percentile, on the activity's grid (8 pixels of padding)
        torch.testing.assert_close(item["mr"][0, 8:72, 8:72], torch.from_numpy(t1[..., z].T / scale))
        torch.testing.assert_close(item["activity"], plain[i]["activity"])  # the same phantom
        # the T1's white matter (brightest class) is where the phantom's white matter is
        wm = item["activity"][0] > 0
        assert float(item["mr"][0][wm].mean()) > float(item["mr"][0][~wm].mean())
    assert float(np.percentile(anatomy_image(t1), 99.5)) == pytest.approx(1.0)
    for bad in (np.zeros((4, 4, 4)), np.full((4, 4, 4), np.nan)):
        with pytest.raises(InputError, match="anatomical"):
            anatomy_image(bad)
