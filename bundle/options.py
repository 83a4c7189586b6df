"""Options checked before a bundle run does anything: each config's `initialize` calls
`check_options(name=@name, ...)` right after installing the one-line error report, so that an
option out of range stops the run with `error: <option>: <problem>` before MONAI builds networks,
loads checkpoints or writes a file.

MONAI's config parser evaluates `$` expressions with the options in them; a bad value reaching
such an expression (`--acceleration abc` in `default_center_fraction(@acceleration)`) would
surface as MONAI's own `RuntimeError` with a traceback. The functions the configs call on
options therefore raise `InputError`s (the one-line report), and the checks below run first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch

from bundle.errors import InputError, as_bool


def _number(name: str, value) -> float:
    if isinstance(value, bool):
        raise InputError(f"{name}: expected a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise InputError(f"{name}: expected a finite number, got {value!r}")
    return x


def _whole(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        else:
            raise InputError(f"{name}: expected a whole number >= {low}, got {value!r}")
    if value < low:
        raise InputError(f"{name}: expected a whole number >= {low}, got {value!r}")
    return value


def at_least(low: float, inclusive: bool = True) -> Callable[[str, object], None]:
    def rule(name: str, value) -> None:
        x = _number(name, value)
        if x < low or (not inclusive and x == low):
            raise InputError(f"{name}: must be {'>=' if inclusive else '>'} {low:g}, got {value!r}")
    return rule


def between(low: float, high: float, low_open: bool, high_open: bool) -> Callable[[str, object], None]:
    left, right = "(" if low_open else "[", ")" if high_open else "]"

    def rule(name: str, value) -> None:
        x = _number(name, value)
        if x < low or x > high or (low_open and x == low) or (high_open and x == high):
            raise InputError(f"{name}: must be in {left}{low:g}, {high:g}{right}, got {value!r}")
    return rule


def whole(low: int = 1) -> Callable[[str, object], None]:
    return lambda name, value: None if _whole(name, value, low) else None


def optional(rule: Callable[[str, object], None]) -> Callable[[str, object], None]:
    return lambda name, value: None if value is None else rule(name, value)


def number_range(name: str, value, low: float, high: float = math.inf, scalar: bool = True) -> tuple[float, float]:
    """A [min, max] pair of finite numbers with low <= min <= max <= high (a single number x means
    [x, x] when `scalar`), or an `InputError` naming `name`: the ranges transforms and datasets
    draw from (simulated coils, SNR, readout oversampling, PET phantom ranges)."""
    pair: tuple[float, ...]
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and scalar:
            pair = (float(value), float(value))
        else:
            pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        pair = ()
    bounds = f"{low:g} <= min <= max" + ("" if math.isinf(high) else f" <= {high:g}")
    if len(pair) != 2 or not all(math.isfinite(v) for v in pair) or not (low <= pair[0] <= pair[1] <= high):
        raise InputError(f"{name} must be {'a number or ' if scalar else ''}a [min, max] pair with {bounds}, got {value!r}")
    return pair[0], pair[1]


def is_auto(value) -> bool:
    """Whether an option says auto (the value chosen from the data): the word, or None."""
    return value is None or (isinstance(value, str) and value.strip().lower() == "auto")


def auto_or(rule: Callable[[str, object], None]) -> Callable[[str, object], None]:
    """The word auto (the value chosen from the data), or a value that `rule` accepts."""
    def check(name: str, value) -> None:
        if isinstance(value, str) and is_auto(value):
            return
        try:
            rule(name, value)
        except InputError as e:
            raise InputError(f"{e} (or auto)") from None
    return check


def each(rule: Callable[[str, object], None]) -> Callable[[str, object], None]:
    def check(name: str, value) -> None:
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise InputError(f"{name}: expected at least one value")
        for v in values:
            rule(name, v)
    return check


def one_of(*choices: str) -> Callable[[str, object], None]:
    def check(name: str, value) -> None:
        if value not in choices:
            raise InputError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return check


def window(name: str, value) -> None:
    """A [low, high] intensity window (e.g. CT's hu_window) with low < high."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InputError(f"{name}: expected [low, high], got {value!r}")
    low, high = (_number(name, v) for v in value)
    if not low < high:
        raise InputError(f"{name}: low must be below high, got {list(value)!r}")


def boolean(name: str, value) -> None:
    as_bool(value, name)


def device(name: str, value) -> None:
    """A torch device that exists on this machine."""
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"{name}: not a torch device: {value!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{name}: {value!r} asked for, but this machine has no CUDA GPU (torch "
                             f"{torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"{name}: {value!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type != "cpu":
        raise InputError(f"{name}: {value!r} is not supported (use cpu or cuda)")


# option name -> rule; a config passes the options it has (by the same names)
RULES: Mapping[str, Callable[[str, object], None]] = MappingProxyType({
    "acceleration": at_least(1.0),
    "accelerations": each(at_least(1.0)),
    "center_fraction": between(0.0, 1.0, True, True),
    "center_fractions": each(between(0.0, 1.0, True, True)),
    "intensity_percentile": between(0.0, 100.0, True, False),
    "batch_size": whole(1),
    "val_batch_size": whole(1),
    "max_epochs": whole(1),
    "epoch_length": optional(whole(1)),
    "val_interval": whole(1),
    "learning_rate": at_least(0.0, inclusive=False),
    "num_workers": whole(0),
    "checkpoint_interval": whole(0),
    "seed": whole(0),
    "hu_window": window,
    "views": whole(2),
    "pet_views": whole(2),
    "count_fraction": at_least(0.0, inclusive=False),
    "full_counts": at_least(0.0, inclusive=False),
    "background_fraction": at_least(0.0),
    "psf_fwhm_mm": at_least(0.0),
    "osem_iterations": whole(1),
    "osem_subsets": whole(1),
    "baseline_iterations": auto_or(whole(1)),
    "baseline_filter_mm": auto_or(at_least(0.0)),
    "em_iterations": whole(0),
    "pet_self_ensemble": boolean,
    "incident_photons": optional(at_least(0.0, inclusive=False)),
    "electronic_noise": at_least(0.0),
    "dc_iterations": whole(0),
    "dc_weight": at_least(0.0),
    "simulated_maps": one_of("espirit", "true"),
    "multicoil_pics_blend": auto_or(between(0.0, 1.0, False, False)),
    "multicoil_pics_weight": auto_or(at_least(0.0)),
    "multicoil_pics_region": one_of("object", "all"),
    "multicoil_pics_mode": auto_or(one_of("joint", "average")),
    "espirit_calibration": one_of("square", "window", "window24"),
    "amp": boolean,
    "output_dicom": boolean,
    "overwrite": boolean,
    "resume": boolean,
    "device": device,
})


def check_options(**options) -> None:
    """Check each option by its rule in `RULES` (an `InputError` naming the first bad one)."""
    for name, value in options.items():
        if name not in RULES:
            raise KeyError(f"no rule for option {name!r}")  # a config bug, not a user's
        RULES[name](name, value)
