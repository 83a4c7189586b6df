"""PET list-mode (PETLINK 32-bit): a synthetic file whose events are known, binned by hand; the
real mMR file of ../shared/data/pet against the counts its README states; unknown formats refused."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED

from bundle.data.petlink import (
    arc_correct,
    fill_gaps,
    gap_mask,
    is_listmode_file,
    listmode_sinograms,
    raw_bin_positions,
    read_petlink,
)
from bundle.errors import InputError

PET = SHARED / "pet"
needs_pet = pytest.mark.skipif(not (PET / "small_listmode_file.l").is_file(),
                               reason="../shared/data/pet (the mMR list-mode file) is not here")
HEADER = """!INTERFILE:=
%SMS-MI header name space:=PETLINK bin address
name of data file := {data}
number of rings:=4
gantry crystal radius (cm):=32.8
bin size (cm):=0.20445
%LM event and tag words format (bits):=32
%axial compression:=1
%maximum ring difference:=1
%number of projections:=16
%number of views:=12
"""


def write_listmode(folder, words, header=HEADER, name="scan"):
    (folder / f"{name}.l").write_bytes(np.asarray(words, dtype="<u4").tobytes())
    (folder / f"{name}.l.hdr").write_text(header.format(data=f"{name}.l"))
    return folder / f"{name}.l.hdr"


def event(sinogram, view, tbin, prompt=True, views=12, bins=16):
    return (int(prompt) << 30) | (sinogram * views * bins + view * bins + tbin)


def tag_ms(ms):
    return (0b100 << 29) | ms


def test_synthetic_file_binned_by_hand(tmp_path):
    # 4 rings, ring difference <= 1: 4 + 3 + 3 = 10 span-1 sinograms of 12 views x 16 bins
    words = [tag_ms(1000), event(0, 3, 5), event(9, 3, 5), event(4, 11, 15), event(2, 0, 0, prompt=False),
             tag_ms(1001), event(7, 3, 5), tag_ms(1250)]
    hdr = write_listmode(tmp_path, words)
    scan = read_petlink(str(hdr))
    assert scan.sinograms == 10 and scan.prompts.shape == (12, 16)
    expected = np.zeros((12, 16), np.int64)
    expected[3, 5], expected[11, 15] = 3, 1
    np.testing.assert_array_equal(scan.prompts, expected)
    assert scan.delayed.sum() == 1 and scan.delayed[0, 0] == 1
    assert scan.duration_s == pytest.approx(0.251)
    assert is_listmode_file(str(hdr)) and not is_listmode_file(str(tmp_path / "scan.l"))  # described by its header


@pytest.mark.parametrize("problem, match", [
    ("header", "not an Interfile header"),
    ("namespace", "not supported"),
    ("span", "axial compression"),
    ("address", "beyond"),
    ("bytes", "whole number"),
    ("no_header", "unknown format"),
])
def test_unknown_or_broken_formats(tmp_path, problem, match):
    words = [event(0, 3, 5)]
    header = HEADER
    if problem == "header":
        header = "GE raw list data\n" + HEADER
    if problem == "namespace":
        header = HEADER.replace("PETLINK bin address", "GE PETtrace")
    if problem == "span":
        header = HEADER.replace("%axial compression:=1", "%axial compression:=11")
    if problem == "address":
        words = [event(10, 0, 0)]  # sinogram 10 does not exist
    hdr = write_listmode(tmp_path, words, header)
    path = str(hdr)
    if problem == "bytes":
        with open(tmp_path / "scan.l", "ab") as f:
            f.write(b"\x00\x01")
    if problem == "no_header":
        hdr.unlink()
        path = str(tmp_path / "scan.l")
    with pytest.raises(InputError, match=match):
        read_petlink(path)


def test_arc_correction_keeps_counts_and_positions(tmp_path):
    hdr = write_listmode(tmp_path, [event(0, 3, 5)])
    scan = read_petlink(str(hdr))
    s = raw_bin_positions(scan)
    assert s[scan.bins // 2] == 0 and np.all(np.diff(s) > 0)
    # a profile linear in s is reproduced at the new positions; a flat one keeps counts per mm
    flat = np.ones((12, 16))
    out = arc_correct(flat, scan, 9, 2.0)
    width = np.gradient(s)[scan.bins // 2]
    np.testing.assert_allclose(out[:, 4], 2.0 / width, rtol=1e-6)
    gaps = np.zeros((12, 16), bool)
    gaps[:, 7] = True
    filled = fill_gaps(np.tile(np.arange(16.0), (12, 1)) * ~gaps, gaps)
    np.testing.assert_allclose(filled[:, 7], 7.0)


@needs_pet
def test_real_mmr_file_counts_and_gaps():
    scan = read_petlink(str(PET / "PET_ACQ_small.l.hdr.STIR"))
    # the numbers of ../shared/data/README.md
    assert int(scan.prompts.sum()) == 218_881 and int(scan.delayed.sum()) == 35_320
    assert scan.prompts.shape == (252, 344) and scan.sinograms == 4084
    assert 0.5 < scan.duration_s < 0.7
    # the LORs through the gap crystals (21 % of the bins) recorded nothing: the numbering holds
    gaps = gap_mask(scan)
    assert 0.2 < gaps.mean() < 0.22
    assert int(scan.prompts[gaps].sum()) == 0 and int(scan.prompts[~gaps].sum()) == 218_881
    prompts, randoms = listmode_sinograms(scan, 227, 2.0)
    assert prompts.shape == (252, 227) and float(prompts.min()) >= 0
    assert float(prompts.sum()) == pytest.approx(218_881 / (1 - gaps.mean()), rel=0.1)  # gaps filled
    assert float(randoms.sum()) == pytest.approx(35_320 / (1 - gaps.mean()), rel=0.1)
    # the list file itself is described by the header beside it: not a separate input
    assert not is_listmode_file(str(PET / "small_listmode_file.l"))
