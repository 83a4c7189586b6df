"""Counting noise shared by the transmission modalities (CT, radiography): Poisson photon counts
plus Gaussian electronic noise (the Poisson-Gaussian model of Foi et al., IEEE TIP 2008), the
dose checks, and the log transform of CT. Pure torch.

Noise is drawn with the caller's generator, so a seeded simulation repeats on any machine.
"""

from __future__ import annotations

import math

import torch

from bundle.errors import InputError


def check_dose(incident_photons: float, electronic_noise: float) -> None:
    """An `InputError` for a non-positive photon count or a negative electronic noise."""
    if not (incident_photons > 0 and math.isfinite(incident_photons)):
        raise InputError(f"incident photon count I0 must be positive, got {incident_photons}")
    if not (electronic_noise >= 0 and math.isfinite(electronic_noise)):
        raise InputError(f"electronic noise (counts) must be >= 0, got {electronic_noise}")


def poisson_gaussian(
    expected: torch.Tensor, electronic_noise: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Detected counts: Poisson(expected) + N(0, electronic_noise^2), in `expected`'s dtype."""
    counts = torch.poisson(expected, generator=generator)
    if electronic_noise > 0:
        counts = counts + electronic_noise * torch.randn(
            counts.shape, generator=generator, dtype=counts.dtype, device=counts.device
        )
    return counts


def transmitted_counts(
    line_integrals: torch.Tensor,
    incident_photons: float,
    electronic_noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Detected counts of a CT scan: Poisson(I0 exp(-p)) plus Gaussian electronic noise (float64)."""
    check_dose(incident_photons, electronic_noise)
    return poisson_gaussian(incident_photons * torch.exp(-line_integrals.double()), electronic_noise, generator)


def counts_to_line_integrals(counts: torch.Tensor, incident_photons: float, min_count: float = 1.0) -> torch.Tensor:
    """Log transform -log(N / I0); counts below `min_count` (zero or negative after electronic
    noise) are raised to it first, as scanners do, so the logarithm stays finite."""
    if min_count <= 0:
        raise InputError(f"min_count must be positive, got {min_count}")
    return -torch.log(counts.clamp_min(min_count) / incident_photons)


def low_dose_line_integrals(
    line_integrals: torch.Tensor,
    incident_photons: float,
    electronic_noise: float = 0.0,
    generator: torch.Generator | None = None,
    min_count: float = 1.0,
) -> torch.Tensor:
    """Noisy line integrals of a CT scan with `incident_photons` per detector bin (same dtype)."""
    counts = transmitted_counts(line_integrals, incident_photons, electronic_noise, generator)
    return counts_to_line_integrals(counts, incident_photons, min_count).to(line_integrals.dtype)


def low_dose_radiograph(
    image: torch.Tensor, incident_photons: float, electronic_noise: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """counts / I0 with counts ~ Poisson(I0 * image) + N(0, electronic_noise^2): the radiograph of
    an exposure with `incident_photons` per pixel at signal 1 (same shape and dtype as `image`)."""
    check_dose(float(incident_photons), float(electronic_noise))
    counts = poisson_gaussian(incident_photons * image.double().clamp_min(0.0), electronic_noise, generator)
    return (counts / incident_photons).to(image.dtype)
