"""FDG brain phantoms made from T1-weighted MRI, BrainWeb style, and their 2D slices for training.

The recipe follows the BrainWeb PET simulations (Collins et al. 1998, IEEE TMI 17:463; the FDG
phantoms of e.g. Ehrhardt et al. 2019 and Gong et al. 2019 built from BrainWeb's tissue classes):
tissue classes of a head, then class activities and 511 keV attenuation.

- Classes from the T1 image (`tissue_classes`): the head is the largest connected region above
  half of Otsu's threshold (holes filled per slice); the brain is the largest connected bright
  region after a 3-voxel erosion (cut from scalp by the dark skull), dilated back, holes filled;
  three-class Otsu within the brain (after a 3-voxel median filter) splits CSF / grey matter / white matter; outside the brain,
  dark head voxels are bone (and air cavities, which the T1 cannot tell from bone), the rest soft
  tissue. A crude segmentation, but it gives real anatomy, real folding and real variation.
- FDG activity (relative units, `ACTIVITY`): grey matter 4, white matter 1, CSF 0.1 (the issue's
  values, a 4:1 grey-to-white ratio as in FDG), scalp and muscle 0.3, bone 0.1; times (1 + a
  smooth random field) for within-class variation (`variation`, ~8 mm correlation).
- Lesions (`insert_lesions`): discs of a few mm, hot or cold, at a stated contrast to the local
  background, inside the brain.
- mu-map at 511 keV (`mu_from_classes`): soft tissue and brain 0.0096 /mm, bone 0.0172 /mm, air 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from types import MappingProxyType

import numpy as np
import torch

from bundle.errors import InputError
from bundle.options import number_range
from bundle.physics.pet import MU_BONE, MU_SOFT_TISSUE

CLASSES = ("background", "csf", "grey_matter", "white_matter", "soft_tissue", "bone")
BACKGROUND, CSF, GM, WM, SOFT, BONE = range(6)
ACTIVITY = MappingProxyType({CSF: 0.1, GM: 4.0, WM: 1.0, SOFT: 0.3, BONE: 0.1})


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    return lab == int(np.argmax(np.bincount(lab.ravel())[1:])) + 1


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    return np.stack([ndi.binary_fill_holes(mask[..., k]) for k in range(mask.shape[-1])], -1)


def tissue_classes(t1: np.ndarray) -> np.ndarray:
    """(X, Y, Z) T1-weighted head (RAS, axial slices along Z) -> uint8 class labels (`CLASSES`)."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_multiotsu, threshold_otsu

    v = np.asarray(t1, dtype=np.float32)
    if v.ndim != 3 or not np.isfinite(v).all() or float(v.max()) <= float(v.min()):
        raise InputError("a T1 head volume must be 3D, finite and not constant")
    head = _largest_component(ndi.binary_closing(v > 0.5 * threshold_otsu(v), iterations=2))
    head = _fill_slices(head)
    dark, _ = threshold_multiotsu(v[head], 3)
    tissue = head & (v > dark)
    brain = _largest_component(ndi.binary_erosion(tissue, iterations=3))
    brain = ndi.binary_closing(_fill_slices(ndi.binary_dilation(brain, iterations=3) & tissue), iterations=2)
    brain &= head
    classes = np.zeros(v.shape, np.uint8)
    classes[head] = SOFT
    classes[head & (v <= dark) & ~brain] = BONE
    if brain.sum() > 100:
        v = ndi.median_filter(v, size=3)  # the classes as regions, not the T1's voxel noise
        csf_gm, gm_wm = threshold_multiotsu(v[brain], 3)
        classes[brain] = CSF
        classes[brain & (v > csf_gm)] = GM
        classes[brain & (v > gm_wm)] = WM
    return classes


def smooth_field(shape: Sequence[int], sigma_px: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A smooth random field of zero mean and unit standard deviation, (H, W)."""
    from bundle.physics.pet import gaussian_blur

    noise = torch.randn(*shape, generator=generator)
    fwhm = sigma_px * 2.0 * math.sqrt(2.0 * math.log(2.0))
    field = gaussian_blur(noise, fwhm, 1.0)
    return (field - field.mean()) / field.std().clamp_min(1e-12)


def activity_from_classes(classes: torch.Tensor, variation: float = 0.1, sigma_px: float = 4.0,
                          generator: torch.Generator | None = None, grey_matter: float | None = None) -> torch.Tensor:
    """FDG activity of a (H, W) class slice: `ACTIVITY` (grey matter `grey_matter` if given) times
    (1 + variation x smooth field), >= 0."""
    act = torch.zeros(classes.shape, dtype=torch.float32)
    for c, a in ACTIVITY.items():
        act[classes == c] = grey_matter if c == GM and grey_matter is not None else a
    if variation > 0:
        act = act * (1.0 + variation * smooth_field(classes.shape, sigma_px, generator)).clamp_min(0.2)
    return act


def mu_from_classes(classes: torch.Tensor) -> torch.Tensor:
    """511 keV attenuation (1/mm) of a class map: bone 0.0172, other tissue 0.0096, air 0."""
    mu = torch.where(classes > BACKGROUND, MU_SOFT_TISSUE, 0.0)
    return torch.where(classes == BONE, MU_BONE, mu).float()


def disc(shape: Sequence[int], cy: float, cx: float, radius: float) -> torch.Tensor:
    """Boolean (H, W) disc of `radius` pixels centred at (cy, cx)."""
    yy, xx = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def _uniform(bounds: Sequence[float], generator: torch.Generator | None) -> float:
    """A number drawn uniformly from [bounds[0], bounds[1]]."""
    return float(bounds[0] + (bounds[1] - bounds[0]) * torch.rand((), generator=generator))


def insert_lesions(activity: torch.Tensor, region: torch.Tensor, count: int, radius_px: Sequence[float],
                   contrasts: Sequence[float], generator: torch.Generator | None = None,
                   margin_px: float = 1.0) -> tuple[torch.Tensor, list[dict]]:
    """Put `count` lesions (discs) into a (H, W) activity map, each wholly inside `region`.

    Each lesion's activity is `contrast` times the mean activity the disc held before (contrast > 1
    hot, < 1 cold); radius and contrast are drawn uniformly from the given [low, high] ranges.
    Returns the new map and one {"center", "radius", "contrast", "background"} per lesion placed
    (fewer than `count` where the region has no room)."""
    out = activity.clone()
    lesions: list[dict] = []
    region = region.bool()
    for _ in range(int(count)):
        r = _uniform(radius_px, generator)
        c = _uniform(contrasts, generator)
        # centres where the whole disc fits: the region eroded by the radius (distance transform)
        from scipy import ndimage as ndi

        inside = torch.from_numpy(ndi.distance_transform_edt(region.numpy())) > r + margin_px
        for les in lesions:  # not overlapping earlier lesions
            inside &= ~disc(region.shape, les["center"][0], les["center"][1], les["radius"] + r + 2 * margin_px)
        where = torch.nonzero(inside)
        if len(where) == 0:
            break
        cy, cx = (float(v) for v in where[int(torch.randint(len(where), (), generator=generator))])
        d = disc(region.shape, cy, cx, r)
        background = float(out[d].mean())
        out[d] = c * background
        lesions.append({"center": (cy, cx), "radius": r, "contrast": c, "background": background})
    return out, lesions


def load_head(path: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A T1 volume as RAS (X, Y, Z) float32 and its voxel size in mm."""
    import nibabel as nib

    try:
        img = nib.as_closest_canonical(nib.load(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise InputError(f"{path}: not a readable NIfTI volume ({type(err).__name__})") from None
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    return data, tuple(float(z) for z in img.header.get_zooms()[:3])  # type: ignore[return-value]


class PETPhantomSlices(torch.utils.data.Dataset):
    """Axial slices of FDG phantoms made from T1 heads: items {"activity": (1, H, W) activity,
    "mu": (1, H, W) 1/mm, "brain": (1, H, W) grey + white matter, "lesion": (1, H, W) 1 in the
    inserted lesions, "count_fraction", "seed",
    "filename", "slice_id", "volume_max"}, padded to `shape`. The scan itself is simulated per
    batch by `bundle.transforms.PETScanBatch` (fresh Poisson noise at every access when `seed` is
    -1; validation fixes the seed per slice).

    Args:
        data: datalist items with an "image" path to a T1 volume (2 mm voxels in the demo data).
        shape: (H, W) the slices are padded to (the PET image grid).
        count_fractions: training draws one per access; validation uses the first.
        lesions: [low, high] lesions per slice (inclusive), radius range `lesion_radius_mm`,
            contrasts drawn from `hot_contrast` or `cold_contrast` (half each).
        variation: within-class variation (standard deviation of the smooth field).
        random: True for training (new variation, lesions, counts each access); False: fixed per slice.
        count_range, variation_range, grey_matter_range: training only (with `random`), [low, high]
            ranges that widen the phantoms (domain randomisation): the count fraction drawn
            log-uniformly instead of from `count_fractions`, the within-class variation and the
            grey-matter activity (white matter 1) uniformly, per access. None: the fixed values.
        min_brain: slices with fewer brain pixels are skipped.
        transform: applied to each item (augmentation).
        repeat: each slice this many times per epoch.
        anatomy: items also get "mr": (1, H, W) the T1 slice the phantom was made from, on the
            MR-guided network's scale (`bundle.transforms.pet.anatomy_image`, per volume).
    """

    def __init__(self, data: Sequence[dict], shape: Sequence[int] = (128, 128),
                 count_fractions: Sequence[float] = (0.1,), lesions: Sequence[int] = (0, 3),
                 lesion_radius_mm: Sequence[float] = (2.0, 5.0), hot_contrast: Sequence[float] = (1.5, 3.0),
                 cold_contrast: Sequence[float] = (0.2, 0.6), variation: float = 0.1, random: bool = True,
                 min_brain: int = 400, transform: Callable | None = None, repeat: int = 1,
                 anatomy: bool = False, count_range: Sequence[float] | None = None,
                 variation_range: Sequence[float] | None = None,
                 grey_matter_range: Sequence[float] | None = None) -> None:
        from bundle.physics.pet import check_count_fraction, pad_to
        from bundle.transforms.pet import anatomy_image

        self.fractions = [check_count_fraction(f) for f in count_fractions]
        if not self.fractions:
            raise InputError("count_fractions: at least one count fraction")
        self.lesions, self.radius_mm = [int(v) for v in lesions], [float(v) for v in lesion_radius_mm]
        self.hot, self.cold = [float(v) for v in hot_contrast], [float(v) for v in cold_contrast]
        self.variation, self.random, self.transform, self.repeat = float(variation), bool(random), transform, int(repeat)
        self.anatomy = bool(anatomy)

        def span(name: str, value: Sequence[float] | None, low: float, high: float) -> tuple[float, float] | None:
            return None if value is None else number_range(name, value, low, high, scalar=False)

        self.count_range = span("count_range", count_range, 1e-4, 10.0)
        self.variation_range = span("variation_range", variation_range, 0.0, 1.0)
        self.grey_matter_range = span("grey_matter_range", grey_matter_range, 1.0, 20.0)
        self.slices: list[dict] = []
        for item in data:
            path = str(item["image"])
            t1, zooms = load_head(path)
            classes = torch.from_numpy(tissue_classes(t1))
            mr = torch.from_numpy(anatomy_image(t1)) if self.anatomy else None
            name = os.path.basename(path)
            for z in range(classes.shape[-1]):
                cls = pad_to(classes[..., z].T.contiguous(), tuple(shape))  # (Y, X): rows anterior-posterior
                brain = (cls == GM) | (cls == WM)
                if int(brain.sum()) < min_brain:
                    continue
                if cls.shape != tuple(shape):
                    raise InputError(f"{path}: slices of {tuple(cls.shape)} pixels do not fit the PET grid {tuple(shape)}")
                entry = {"classes": cls, "filename": name, "slice_id": f"{name}:{z}", "pixel_mm": zooms[0]}
                if mr is not None:
                    entry["mr"] = pad_to(mr[..., z].T.contiguous(), tuple(shape))
                self.slices.append(entry)
        if not self.slices:
            raise InputError("no head slices with brain in the datalist")

    def __len__(self) -> int:
        return len(self.slices) * self.repeat

    def __getitem__(self, index: int) -> dict:
        base = self.slices[index % len(self.slices)]
        i = index % len(self.slices)
        g = torch.Generator().manual_seed(int(torch.randint(2**62, ())) if self.random else 1000 + i)
        cls = base["classes"]
        variation, grey = self.variation, ACTIVITY[GM]
        if self.random and self.variation_range is not None:
            variation = _uniform(self.variation_range, g)
        if self.random and self.grey_matter_range is not None:
            grey = _uniform(self.grey_matter_range, g)
        act = activity_from_classes(cls, variation, generator=g, grey_matter=grey)
        brain = (cls == GM) | (cls == WM)
        n = int(torch.randint(self.lesions[0], self.lesions[1] + 1, (), generator=g))
        n_hot = int(torch.randint(0, n + 1, (), generator=g))
        r_px = [v / base["pixel_mm"] for v in self.radius_mm]
        act, hot = insert_lesions(act, brain, n_hot, r_px, self.hot, g)
        act, cold = insert_lesions(act, brain & (act < 1.5 * grey), n - n_hot, r_px, self.cold, g)
        lesion = torch.zeros(cls.shape, dtype=torch.bool)
        for les in hot + cold:
            lesion |= disc(cls.shape, les["center"][0], les["center"][1], les["radius"])
        fraction = self.fractions[int(torch.randint(len(self.fractions), (), generator=g))] if self.random else self.fractions[0]
        if self.random and self.count_range is not None:
            low, high = (math.log(v) for v in self.count_range)
            fraction = math.exp(_uniform((low, high), g))
        item = {"activity": act[None], "mu": mu_from_classes(cls)[None], "brain": brain[None].float(),
                "lesion": lesion[None].float(),
                "count_fraction": fraction, "seed": -1 if self.random else 7919 * (i + 1),
                "filename": base["filename"], "slice_id": base["slice_id"], "volume_max": float(act.max())}
        if "mr" in base:
            item["mr"] = base["mr"][None]
        return self.transform(item) if self.transform is not None else item


def phantom_volume(path: str, seed: int = 0, hot: int = 2, cold: int = 1, variation: float = 0.1,
                   min_brain: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """An FDG phantom volume from the T1 head at `path`, on its RAS grid: (activity, mu, classes,
    lesions) arrays (X, Y, Z) and the index of their first slice in the T1: only the axial slices
    from the first to the last with at least `min_brain` brain pixels are kept. Each slice gets
    `hot` lesions of contrast 2 to 3 and `cold` of contrast 0.2 to 0.5 to their local background,
    of radius 1.5 to 2.5 pixels (6 to 10 mm across at 2 mm); the lesion map holds +k for the k-th hot
    and -k for the k-th cold lesion of its slice. Seeded: the same call gives the same phantom."""
    t1, _ = load_head(path)
    classes = tissue_classes(t1)
    brain = (classes == GM) | (classes == WM)
    keep = np.nonzero(brain.sum((0, 1)) >= min_brain)[0]
    if len(keep) == 0:
        raise InputError(f"{path}: no axial slices with brain")
    classes = classes[..., keep[0]:keep[-1] + 1]
    g = torch.Generator().manual_seed(int(seed))
    act = np.zeros(classes.shape, np.float32)
    les = np.zeros(classes.shape, np.int16)
    for z in range(classes.shape[-1]):
        cls = torch.from_numpy(classes[..., z])
        a = activity_from_classes(cls, variation, generator=g)
        region = (cls == GM) | (cls == WM)
        a, placed_hot = insert_lesions(a, region, hot, (1.5, 2.5), (2.0, 3.0), g)
        taken = torch.zeros_like(region)
        for les_i in placed_hot:
            taken |= disc(cls.shape, les_i["center"][0], les_i["center"][1], les_i["radius"] + 4)
        a, placed_cold = insert_lesions(a, region & ~taken, cold, (1.5, 2.5), (0.2, 0.5), g)
        for sign, placed in ((1, placed_hot), (-1, placed_cold)):
            for i, les_i in enumerate(placed):
                les[..., z][disc(cls.shape, les_i["center"][0], les_i["center"][1], les_i["radius"]).numpy()] = sign * (i + 1)
        act[..., z] = a.numpy()
    mu = mu_from_classes(torch.from_numpy(classes)).numpy()
    return act, mu, classes, les, int(keep[0])
