"""Raw multi-coil k-space readers (fastMRI, ISMRMRD, TWIX, BART): each on a real file (committed or
in ../shared) and on a synthetic one whose content is known, and every bad input they refuse."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import ROOT, SHARED

from bundle.data.fastmri import write_fastmri
from bundle.data.rawkspace import read_cfl, read_raw, write_cfl
from bundle.errors import InputError
from bundle.physics.mri import fft2c
from bundle.physics.mri_sense import birdcage_maps

DEMO_PHANTOM = ROOT / "bundle" / "demo_data" / "multicoil" / "pulseq_phantom_32ch_64.h5"
KSPACE = SHARED / "kspace"
needs_shared = pytest.mark.skipif(not KSPACE.is_dir(), reason="../shared/data/kspace is not beside the repository")


def coil_kspace(coils=4, h=32, w=24, seed=0) -> np.ndarray:
    """(C, H, W) k-space of a random smooth object seen by birdcage coils."""
    gen = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.avg_pool2d(torch.rand(1, 1, h, w, generator=gen), 5, 1, 2)[0, 0]
    maps = birdcage_maps(coils, (h, w))
    return fft2c(maps * img.to(torch.complex64)).numpy()


def write_ismrmrd(path, kspace: np.ndarray, lines=None, recon=None, trajectory="cartesian", extra_scan=False,
                  repetitions=1, reverse=()):
    """A minimal ISMRMRD file of (S, C, H, W) k-space: one acquisition per acquired line."""
    import ismrmrd

    s, c, h, w = kspace.shape
    recon = recon or (h, w)
    xml = ('<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
           f"<encodedSpace><matrixSize><x>{h}</x><y>{w}</y><z>1</z></matrixSize><fieldOfView_mm><x>{h}</x><y>{w}</y><z>5</z></fieldOfView_mm></encodedSpace>"
           f"<reconSpace><matrixSize><x>{recon[0]}</x><y>{recon[1]}</y><z>1</z></matrixSize><fieldOfView_mm><x>{recon[0]}</x><y>{recon[1]}</y><z>5</z></fieldOfView_mm></reconSpace>"
           f"<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{w - 1}</maximum><center>{w // 2}</center></kspace_encoding_step_1></encodingLimits>"
           f"<trajectory>{trajectory}</trajectory></encoding></ismrmrdHeader>")
    dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    dset.write_xml_header(xml)
    if extra_scan:  # a noise scan first: must be skipped
        noise = ismrmrd.Acquisition.from_array(np.ones((c, h), np.complex64) * 99)
        noise.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
        dset.append_acquisition(noise)
    for rep in range(repetitions):
        for sl in range(s):
            for y in (range(w) if lines is None else np.flatnonzero(lines)):
                data = kspace[sl, :, :, y]
                flip = y in reverse
                acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(data[:, ::-1] if flip else data))
                acq.idx.kspace_encode_step_1 = int(y)
                acq.idx.slice = sl
                acq.idx.repetition = rep
                if flip:
                    acq.set_flag(ismrmrd.ACQ_IS_REVERSE)
                dset.append_acquisition(acq)
    dset.close()
    return str(path)


# ---- fastMRI ----
def test_fastmri_real_demo_phantom_and_synthetic(tmp_path):
    raw = read_raw(str(DEMO_PHANTOM))
    assert raw.format == "fastmri" and raw.kspace.shape == (1, 32, 64, 64) and raw.mask is None
    with h5py.File(DEMO_PHANTOM) as f:
        ref = f["reconstruction_rss"][0]
    coil = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(raw.kspace[0], axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(np.sqrt((np.abs(coil) ** 2).sum(0)), ref, rtol=1e-3, atol=1e-3 * ref.max())

    k = coil_kspace()
    mask = np.zeros(24, bool)
    mask[::3] = True
    mask[10:14] = True
    path = write_fastmri(str(tmp_path / "s.h5"), k[None], mask=mask, recon_size=(16, 24), fov_mm=(32.0, 24.0, 5.0))
    raw = read_raw(path)
    np.testing.assert_array_equal(raw.mask, mask)
    np.testing.assert_array_equal(raw.kspace[0], k.astype(np.complex64))
    assert raw.crop == (16, 24)
    # no mask dataset, but zero lines: the mask is read off the data
    path = write_fastmri(str(tmp_path / "z.h5"), (k * mask)[None])
    np.testing.assert_array_equal(read_raw(path).mask, mask)


# ---- ISMRMRD ----
def test_ismrmrd_synthetic_places_lines_flips_reversed_and_skips_noise(tmp_path):
    k = coil_kspace(coils=3, h=32, w=20)[None]
    lines = np.zeros(20, bool)
    lines[::2] = True
    lines[8:12] = True
    path = write_ismrmrd(tmp_path / "a.h5", k, lines=lines, recon=(16, 20), extra_scan=True, reverse=(4, 6))
    raw = read_raw(path)
    assert raw.format == "ismrmrd" and raw.kspace.shape == (1, 3, 32, 20) and raw.crop == (16, 20)
    np.testing.assert_array_equal(raw.mask, lines)
    np.testing.assert_allclose(raw.kspace, k * lines, atol=1e-6)


@needs_shared
def test_ismrmrd_from_the_real_twix_scan(tmp_path):
    """No real ISMRMRD file is available: the real TWIX scan's k-space written as ISMRMRD reads back."""
    twix = read_raw(str(KSPACE / "twix_gre.dat"))
    path = write_ismrmrd(tmp_path / "gre.h5", twix.kspace, recon=(160, 160))
    raw = read_raw(path)
    np.testing.assert_allclose(raw.kspace, twix.kspace, atol=1e-6 * np.abs(twix.kspace).max())
    assert raw.crop == (160, 160) and raw.mask is None


def test_bad_ismrmrd_files(tmp_path):
    k = coil_kspace(coils=2, h=16, w=16)[None]
    with pytest.raises(InputError, match="radial trajectory"):
        read_raw(write_ismrmrd(tmp_path / "r.h5", k, trajectory="radial"))
    with pytest.raises(InputError, match="2 repetitions"):
        read_raw(write_ismrmrd(tmp_path / "rep.h5", k, repetitions=2))
    good = write_ismrmrd(tmp_path / "g.h5", k)
    data = Path(good).read_bytes()
    (tmp_path / "t.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="t.h5: cannot be read"):
        read_raw(str(tmp_path / "t.h5"))


# ---- TWIX ----
@needs_shared
def test_twix_real_gre_and_a_synthetic_change_of_it(tmp_path):
    import twixtools

    raw = read_raw(str(KSPACE / "twix_gre.dat"))
    assert raw.format == "twix" and raw.kspace.shape == (1, 2, 320, 160) and raw.crop == (160, 160)
    assert raw.mask is None
    # the same file with a radial trajectory in its header, and with two measurements
    meas = twixtools.read_twix(str(KSPACE / "twix_gre.dat"), verbose=False)
    header = meas[0]["hdr_str"].tobytes()
    assert b"sKSpace.ucTrajectory\t = \t1\n" in header
    header = header.replace(b"sKSpace.ucTrajectory\t = \t1\n", b"sKSpace.ucTrajectory\t = \t2\n")  # radial
    meas[0]["hdr_str"] = np.frombuffer(header, dtype="<S1")
    twixtools.write_twix(meas, str(tmp_path / "radial.dat"), version_is_ve=True)
    with pytest.raises(InputError, match="radial.dat: non-Cartesian trajectory"):
        read_raw(str(tmp_path / "radial.dat"))
    meas = twixtools.read_twix(str(KSPACE / "twix_gre.dat"), verbose=False)
    twixtools.write_twix(meas + meas, str(tmp_path / "two.dat"), version_is_ve=True)
    with pytest.raises(InputError, match="two.dat: 2 measurements with image data"):
        read_raw(str(tmp_path / "two.dat"))
    with pytest.raises(InputError, match="echo-planar"):
        read_raw(str(KSPACE / "twix_epi.dat"))
    data = (KSPACE / "twix_gre.dat").read_bytes()
    (tmp_path / "cut.dat").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="cut.dat"):
        read_raw(str(tmp_path / "cut.dat"))


# ---- BART ----
def test_bart_synthetic_round_trip_2d_and_maps(tmp_path):
    k = coil_kspace(coils=4, h=20, w=18)  # (C, H, W)
    bart = np.transpose(k, (1, 2, 0))[None]  # (READ=1, PHS1=H, PHS2=W, COIL)
    write_cfl(str(tmp_path / "k"), bart)
    np.testing.assert_array_equal(read_cfl(str(tmp_path / "k.cfl")).squeeze(), bart.squeeze())
    raw = read_raw(str(tmp_path / "k.hdr"))
    assert raw.format == "bart" and raw.mask is None
    np.testing.assert_array_equal(raw.kspace[0], k)
    write_cfl(str(tmp_path / "k_maps"), np.transpose(birdcage_maps(4, (20, 18)).numpy(), (1, 2, 0))[None])
    np.testing.assert_allclose(read_raw(str(tmp_path / "k.cfl")).maps[0], birdcage_maps(4, (20, 18)).numpy())
    write_cfl(str(tmp_path / "k_maps"), np.transpose(birdcage_maps(3, (20, 18)).numpy(), (1, 2, 0))[None])
    with pytest.raises(InputError, match="3 coils in the maps, 4 in the k-space"):
        read_raw(str(tmp_path / "k.cfl"))


@needs_shared
def test_bart_real_brain_reads_in_the_axes_of_barts_own_reconstruction():
    raw = read_raw(str(KSPACE / "bart_pics_brain_ksp.cfl"))
    assert raw.kspace.shape == (1, 8, 180, 230)
    assert raw.mask.shape == (180, 230) and 0.1 < raw.mask.mean() < 0.15  # Poisson-disc samples
    pics = np.abs(read_cfl(str(KSPACE / "bart_pics_brain_img.cfl"))[0, :, :, 0, 0])  # BART's PICS of it
    coil = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(raw.kspace[0], axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    zero_filled = np.sqrt((np.abs(coil) ** 2).sum(0))
    straight = np.corrcoef(zero_filled.ravel(), pics.ravel())[0, 1]
    flipped = np.corrcoef(zero_filled[::-1].ravel(), pics.ravel())[0, 1]
    assert straight > 0.9 and flipped < straight - 0.05  # same axes, same object (0.96; flipped 0.82)


def test_bad_bart_files(tmp_path):
    k = coil_kspace(coils=2, h=16, w=16)
    write_cfl(str(tmp_path / "k"), np.transpose(k, (1, 2, 0))[None])
    data = (tmp_path / "k.cfl").read_bytes()
    (tmp_path / "k.cfl").write_bytes(data[:-8])
    with pytest.raises(InputError, match="k.cfl: .* bytes but the header"):
        read_raw(str(tmp_path / "k.cfl"))
    (tmp_path / "k.cfl").unlink()
    with pytest.raises(InputError, match="file not found"):
        read_raw(str(tmp_path / "k.hdr"))
    (tmp_path / "bad.hdr").write_text("nonsense\n")
    (tmp_path / "bad.cfl").write_bytes(b"")
    with pytest.raises(InputError, match="not a BART header"):
        read_raw(str(tmp_path / "bad.cfl"))


# ---- checks every format shares ----
@pytest.mark.parametrize("problem, message", [
    ("nan", "NaN or infinite"),
    ("zeros", "all zeros"),
    ("mask", "'mask' has shape"),
    ("maps", "do not match the k-space"),
    ("truncated", "cannot be read as fastMRI"),
])
def test_bad_fastmri_multicoil_files(tmp_path, problem, message):
    k = coil_kspace()[None]
    path = str(tmp_path / f"{problem}.h5")
    if problem == "nan":
        k[0, 1, 3, 4] = np.nan
    if problem == "zeros":
        k[:] = 0
    write_fastmri(path, k, mask=np.ones(23, bool) if problem == "mask" else None)
    if problem == "maps":
        with h5py.File(path, "a") as f:
            f.create_dataset("sensitivity_maps", data=np.ones((1, 3, 32, 24), np.complex64))
    if problem == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(InputError, match=message) as e:
        read_raw(path)
    assert str(e.value).startswith(path) and "\n" not in str(e.value)


def test_unknown_suffix(tmp_path):
    shutil.copy(DEMO_PHANTOM, tmp_path / "x.txt")
    with pytest.raises(InputError, match="not raw k-space"):
        read_raw(str(tmp_path / "x.txt"))


def test_zero_padded_edges_are_not_undersampling(tmp_path):
    k = coil_kspace(coils=3, h=32, w=24)
    k[..., :3] = 0
    k[..., -2:] = 0  # a fully sampled scan zero-padded in phase encoding (as some fastMRI files are)
    assert read_raw(write_fastmri(str(tmp_path / "pad.h5"), k[None])).mask is None
