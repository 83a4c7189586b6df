import numpy as np
import pytest
import torch
from conftest import phantom_volume

from bundle.reporting.lesions import cnr, disc, false_structure, insert_lesions, lesion_sites, recovered_contrast, ring


@pytest.mark.parametrize("contrast", [-0.2, -0.1, 0.1, 0.2])
@pytest.mark.parametrize("radius", [1.5, 3.0])
def test_insertion_puts_the_requested_contrast(contrast, radius):
    ref = torch.from_numpy(phantom_volume((80, 96, 1), seed=1)[..., 0]).float() + 20
    sites = lesion_sites(ref, radius, 3, np.random.default_rng(0))
    assert len(sites) == 3
    img, masks = insert_lesions(ref, sites, radius, contrast)
    for m in masks:
        local = ref[m].mean()
        assert float((img[m].mean() - local) / local) == pytest.approx(contrast, rel=1e-5)
        # the identity "reconstruction" recovers all of it, and invents nothing without a lesion
        assert recovered_contrast(img, ref, ref, m) == pytest.approx(contrast, rel=1e-5)
        assert false_structure(ref, ref, m) == 0
    outside = ~torch.stack(masks).any(0)
    assert torch.equal(img[outside], ref[outside])


def test_sites_lie_in_tissue_and_do_not_overlap():
    ref = torch.from_numpy(phantom_volume((80, 96, 1), seed=2)[..., 0]).float()
    sites = lesion_sites(ref, 2.0, 4, np.random.default_rng(1))
    for i, s in enumerate(sites):
        assert bool((ref[disc(ref.shape, s, 6)] > 0.3 * ref.max()).all())
        for t in sites[i + 1:]:
            assert (s[0] - t[0]) ** 2 + (s[1] - t[1]) ** 2 > 12**2


def test_cnr_hand_computed():
    img = torch.zeros(40, 40)
    m = disc(img.shape, (20, 20), 3)
    bg = ring(img.shape, (20, 20), 3)
    img[bg] = torch.tensor([1.0, 3.0]).repeat(int(bg.sum()) // 2 + 1)[: int(bg.sum())]
    img[m] = 5.0
    expected = abs(5.0 - img[bg].mean()) / img[bg].std()
    assert cnr(img, m, bg) == pytest.approx(float(expected))


def test_bad_contrast():
    with pytest.raises(ValueError, match="contrast"):
        insert_lesions(torch.ones(8, 8), [(4, 4)], 1, -1.5)
