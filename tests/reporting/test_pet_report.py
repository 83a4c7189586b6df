"""`bundle.reporting.pet`'s region metrics, against hand-computed cases."""

from __future__ import annotations

import torch

from bundle.reporting.pet import core_region, image_metrics


def test_the_core_of_a_region_is_its_erosion_by_one_pixel_in_plane():
    """A 4 x 5 block keeps its 2 x 3 inside; a one-pixel-wide line (a grey-matter ribbon) keeps
    nothing; the image edge counts as outside; slices are eroded on their own."""
    region = torch.zeros(2, 6, 7, dtype=torch.bool)
    region[0, 1:5, 1:6] = True
    region[0, 0, :] = True  # the top row, at the image's edge
    region[1, 3, :] = True  # a line
    expected = torch.zeros_like(region)
    expected[0, 2:4, 2:5] = True
    expected[0, 1, 2:5] = True  # row 1's neighbours above are the (in-region) top row
    assert torch.equal(core_region(region), expected)


def test_core_bias_reads_the_core_and_whole_region_bias_the_whole_class():
    """A reconstruction 10 % high at the border voxels of a block and exact inside it: the whole
    class's bias is the border's share of 10 %, the core's is 0."""
    t = torch.ones(1, 8, 8)
    gm = torch.zeros(1, 8, 8, dtype=torch.bool)
    gm[0, 1:7, 1:7] = True  # 36 voxels, 16 of them inside
    wm = torch.zeros_like(gm)
    wm[0, 0, :] = True
    case = {"activity": t, "head": torch.ones_like(gm), "gm": gm, "wm": wm,
            "gm_core": core_region(gm), "wm_core": core_region(wm)}
    x = t.clone()
    x[gm & ~case["gm_core"]] = 1.1
    m = image_metrics(x, case, with_ssim=False)
    assert abs(m["gm_bias"] - 0.1 * 20 / 36) < 1e-6
    assert abs(m["gm_core_bias"]) < 1e-7
    assert "wm_core_bias" not in m  # a one-voxel-wide class has no core
