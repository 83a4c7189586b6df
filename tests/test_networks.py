import numpy as np
import pytest
import torch

from bundle.errors import InputError
from bundle.physics.mri import cartesian_mask, data_consistency, fft2c, undersample
from bundle.networks import ResidualUNet, load_checkpoint


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (1, 1, 90, 120), (3, 1, 37, 53)])
def test_any_in_plane_size(shape):
    net = ResidualUNet(features=(4, 4, 8, 8, 16, 4)).eval()
    with torch.no_grad():
        assert net(torch.rand(shape)).shape == shape


def test_global_residual():
    net = ResidualUNet(features=(4, 4, 8, 8, 16, 4)).eval()
    torch.nn.init.zeros_(net.unets[0].final_conv.weight)
    torch.nn.init.zeros_(net.unets[0].final_conv.bias)
    x = torch.rand(2, 1, 40, 48)
    with torch.no_grad():
        assert torch.allclose(net(x), x)


def test_data_consistency_step():
    net = ResidualUNet(features=(4, 4, 8, 8, 16, 4), data_consistency=True).eval()
    image = torch.rand(2, 1, 32, 48)
    mask = cartesian_mask(48, 4, 0.08, "random", np.random.default_rng(0))
    zf, k = undersample(image, mask)
    kspace = torch.cat([k.real, k.imag], dim=1)
    mask_b = mask.float().view(1, 1, 1, -1).expand(2, 1, 1, 48)
    with torch.no_grad():
        out = net(zf, kspace=kspace, mask=mask_b)
        net.data_consistency = False
        pre = net(zf, kspace=kspace, mask=mask_b)
    dc = data_consistency(pre, k, mask)
    assert torch.allclose(fft2c(dc)[..., mask], k[..., mask], atol=1e-4)  # acquired lines kept exactly
    assert torch.allclose(out, dc.abs(), atol=1e-5)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"expected a \(B, 1, H, W\) image"):
        ResidualUNet(features=(4, 4, 8, 8, 16, 4))(torch.rand(1, 2, 16, 16))


def test_load_checkpoint(tmp_path):
    net = ResidualUNet(features=(4, 4, 8, 8, 16, 4))
    torch.save({"model": net.state_dict()}, tmp_path / "ok.pt")
    other = ResidualUNet(features=(4, 4, 8, 8, 16, 4))
    load_checkpoint(other, str(tmp_path / "ok.pt"))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))
    with pytest.raises(InputError, match="file not found"):
        load_checkpoint(other, str(tmp_path / "missing.pt"))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="bad.pt: corrupt"):
        load_checkpoint(other, str(tmp_path / "bad.pt"))
    with pytest.raises(InputError, match="does not match network_def"):
        load_checkpoint(ResidualUNet(features=(8, 8, 8, 8, 16, 8)), str(tmp_path / "ok.pt"))


def test_boolean_options_from_the_command_line():
    assert ResidualUNet(features=(4, 4, 8, 8, 16, 4), data_consistency="false").data_consistency is False
    assert ResidualUNet(features=(4, 4, 8, 8, 16, 4), data_consistency="true").data_consistency is True
    with pytest.raises(InputError, match="data_consistency must be true or false"):
        ResidualUNet(features=(4, 4, 8, 8, 16, 4), data_consistency="maybe")


def test_cascades():
    net = ResidualUNet(features=(4, 4, 8, 8, 16, 4), cascades=2).eval()
    assert len(net.unets) == 2
    with torch.no_grad():
        assert net(torch.rand(1, 1, 24, 40)).shape == (1, 1, 24, 40)
    with pytest.raises(InputError, match="cascades"):
        ResidualUNet(cascades=0)


def test_weights_carry_their_metadata_and_loading_checks_it(tmp_path):
    from conftest import ROOT

    from bundle.networks import checkpoint_metadata, metadata_of, variant_features, with_metadata

    net = ResidualUNet(features=(4, 4, 8, 8, 16, 4), norm="batch")
    info = {"modality": "ct", "architecture": net.architecture(), "acquisition": {"views": 60}}
    torch.save(with_metadata(net.state_dict(), info), tmp_path / "w.pt")
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    assert metadata_of(state) == info and set(state) == set(net.state_dict())  # still a plain state dict
    load_checkpoint(ResidualUNet(features=(4, 4, 8, 8, 16, 4), norm="batch"), str(tmp_path / "w.pt"), modality="ct")
    with pytest.raises(InputError, match=r"w.pt: expected mri custom ResidualUNet \(.*\), found ct custom "
                                         r"ResidualUNet \(.*\) weights"):
        load_checkpoint(ResidualUNet(features=(4, 4, 8, 8, 16, 4), norm="batch"), str(tmp_path / "w.pt"), modality="mri")
    with pytest.raises(InputError, match=r"expected ct custom ResidualUNet \(features \[4, 4, 8, 8, 16, 4\], norm "
                                         r"instance.*found ct"):
        load_checkpoint(ResidualUNet(features=(4, 4, 8, 8, 16, 4)), str(tmp_path / "w.pt"), modality="ct")
    # the shipped weights: each says what it is, and the light variant is read from its file
    expected = {"model.pt": "mri", "model_light.pt": "mri", "model_ct.pt": "ct", "model_ct_lowdose.pt": "ct",
                "model_ct_real.pt": "ct_measured", "model_multicoil.pt": "mri_multicoil", "model_pet.pt": "pet",
                "model_xray.pt": "xray"}
    for name, modality in expected.items():
        meta = checkpoint_metadata(str(ROOT / "models" / name))
        assert meta["modality"] == modality and meta["bundle_version"] and meta["acquisition"], name
    assert variant_features("auto", str(ROOT / "models" / "model_light.pt")) == [8, 8, 16, 32, 64, 8]
    assert variant_features("auto", str(ROOT / "models" / "model.pt")) == [16, 16, 32, 64, 128, 16]
    lowdose = checkpoint_metadata(str(ROOT / "models" / "model_ct_lowdose.pt"))
    assert lowdose["acquisition"]["incident_photons"] == 10000


def test_weights_loaded_by_another_tool_are_checked_by_the_inferers():
    """MONAI Label loads `model_filename` itself (load_state_dict): the network remembers what the
    weights said, and the inferers refuse another modality's weights in one line."""
    from conftest import ROOT

    from bundle.inference import ReconstructorInferer, SliceReconstructionInferer
    from bundle.networks import check_loaded_weights

    net = ResidualUNet()
    net.load_state_dict(torch.load(ROOT / "models" / "model_ct.pt", weights_only=True))
    volume = torch.rand(1, 1, 32, 32, 2)
    with pytest.raises(InputError, match="weights: the network holds ct weights, this config reconstructs mri"):
        SliceReconstructionInferer()(volume, net)
    with pytest.raises(InputError, match="holds ct weights, this config reconstructs pet"):
        ReconstructorInferer(reconstructor=None, modality="pet")(volume, net)
    net.load_state_dict(torch.load(ROOT / "models" / "model.pt", weights_only=True))
    check_loaded_weights(net, "mri")  # the right weights pass
    bare = ResidualUNet()
    bare.load_state_dict(dict(ResidualUNet().state_dict()))  # no metadata: nothing to check
    check_loaded_weights(bare, "mri")


def test_guide_channels_guide_but_are_not_reconstructed():
    net = ResidualUNet(features=(4, 4, 8, 8, 16, 4), data_consistency=False, guide_channels=1).eval()
    assert net.architecture()["guide_channels"] == 1
    x, g = torch.rand(2, 1, 32, 48), torch.rand(2, 1, 32, 48)  # multiples of 16: no padding
    with torch.no_grad():
        out = net(torch.cat([x, g], 1))
        assert out.shape == (2, 1, 32, 48)
        # residual on the image only: x + unet([x, g]), computed by hand
        torch.testing.assert_close(out, x + net.unets[0](torch.cat([x, g], 1)))
        # the guide changes the output (its weights are not zero here)
        assert not torch.allclose(out, net(torch.cat([x, torch.rand_like(g)], 1)))
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        net(x)
    for bad in (-1, 9, 1.5, True):
        with pytest.raises(InputError, match="guide_channels"):
            ResidualUNet(guide_channels=bad)


def test_widened_weights_start_where_the_guide_free_model_ends(tmp_path):
    from bundle.checkpoints import add_guide_channels
    from bundle.networks import checkpoint_metadata, with_metadata

    feats = (4, 4, 8, 8, 16, 4)
    base = ResidualUNet(features=feats, norm="batch", data_consistency=False).eval()
    src = tmp_path / "pet.pt"
    torch.save(with_metadata(base.state_dict(), {"modality": "pet", "architecture": base.architecture()}), src)
    out = tmp_path / "pet_mr.pt"
    add_guide_channels(str(src), str(out))
    guided = load_checkpoint(ResidualUNet(features=feats, norm="batch", data_consistency=False, guide_channels=1),
                             str(out), modality="pet").eval()
    assert checkpoint_metadata(str(out))["architecture"]["guide_channels"] == 1
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        for guide in (torch.zeros_like(x), 5 * torch.rand_like(x)):
            torch.testing.assert_close(guided(torch.cat([x, guide], 1)), base(x))
    # the widened weights do not load into a guide-free network, and are not widened twice
    with pytest.raises(InputError, match="guide_channels"):
        load_checkpoint(ResidualUNet(features=feats, norm="batch", data_consistency=False), str(out))
    with pytest.raises(InputError, match="already"):
        add_guide_channels(str(out), str(tmp_path / "twice.pt"))
    with pytest.raises(InputError, match="not found"):
        add_guide_channels(str(tmp_path / "none.pt"), str(tmp_path / "x.pt"))
