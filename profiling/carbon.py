"""Carbon estimates from measured energy: grams CO2eq = kWh × PUE × grid intensity (gCO2eq/kWh).

The energy is a measurement (profiling.energy); the carbon figure is always an estimate, because the intensity is an
annual average of a country's grid, not of the electricity a machine drew at that hour. `CarbonEstimate` keeps the
inputs next to the result so a reported figure can be re-derived with a different intensity or PUE.

    grid = carbon.from_profile_config(config.profile)   # profile.country / .intensity_g_per_kwh / .pue
    estimate = grid.estimate(energy_j=measurement.total_j)   # CarbonEstimate; grid.grams(j) for the number only

Resolution of the intensity (what `grid()` and `from_profile_config()` do):
    1. an explicit `intensity_g_per_kwh` other than the world-average default wins (you know your grid better);
    2. else `country` (ISO 3166-1 alpha-2), looked up in GRID_INTENSITY_G_PER_KWH; unknown codes raise ValueError;
    3. else the world average, 475 gCO2eq/kWh.
An intensity equal to the default counts as "not given" so that a config whose intensity field keeps its default can
still pick a country; to force 475 with a country set, clear the country.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

J_PER_KWH = 3.6e6
# IEA world average used by CodeCarbon as its fallback; the default of docs/design.md, so runs are comparable across machines.
WORLD_AVERAGE_G_PER_KWH = 475.0
WORLD_AVERAGE_SOURCE = "world average 475 gCO2eq/kWh (IEA, CodeCarbon's default)"

# Lifecycle carbon intensity of electricity generation in 2023, gCO2eq/kWh, annual national averages (estimates of
# the grid, not measurements of a run): Ember, Yearly Electricity Data, as published by Our World in Data,
# "Carbon intensity of electricity generation" (https://ourworldindata.org/grapher/carbon-intensity-electricity),
# rounded to whole grams. Generation-based: imports and hour-to-hour variation are not reflected.
GRID_INTENSITY_G_PER_KWH: dict[str, float] = {
    "AU": 549.0,  # Australia
    "BR": 98.0,  # Brazil
    "CA": 170.0,  # Canada
    "CN": 582.0,  # China
    "DE": 381.0,  # Germany
    "FR": 56.0,  # France
    "GB": 238.0,  # United Kingdom
    "IN": 713.0,  # India
    "JP": 485.0,  # Japan
    "NO": 30.0,  # Norway
    "PL": 662.0,  # Poland
    "SE": 41.0,  # Sweden
    "US": 369.0,  # United States
}
GRID_INTENSITY_SOURCE = "Ember 2023 annual average via Our World in Data"
_ALIASES = {"UK": "GB"}  # Common but not ISO; accepted because it is unambiguous.


@dataclasses.dataclass(frozen=True)
class CarbonEstimate:
    """Estimated emissions of some measured energy.

    Attributes:
        kwh: energy in kWh at the device (before PUE).
        pue: power usage effectiveness of the facility (>= 1), multiplying device energy into facility energy.
        intensity_g_per_kwh: grid carbon intensity used, gCO2eq/kWh.
        intensity_source: where the intensity came from (table entry, explicit config value, world average).
        g_co2eq: the estimate, grams of CO2 equivalent.
    """

    kwh: float
    pue: float
    intensity_g_per_kwh: float
    intensity_source: str
    g_co2eq: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: NaN (no energy measured) becomes None."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in dataclasses.asdict(self).items()}


def _kwh(energy_j: float | None, kwh: float | None) -> float:
    if (energy_j is None) == (kwh is None):
        raise ValueError("give exactly one of energy_j and kwh")
    value = energy_j / J_PER_KWH if energy_j is not None else float(kwh)
    if value < 0:  # NaN (energy not measured) passes through and yields a NaN estimate, not a made-up zero.
        raise ValueError(f"energy must be >= 0, got {energy_j if energy_j is not None else kwh}")
    return value


def _check(intensity_g_per_kwh: float, pue: float) -> None:
    if not intensity_g_per_kwh >= 0:
        raise ValueError(f"intensity_g_per_kwh must be >= 0, got {intensity_g_per_kwh}")
    if not pue >= 1.0:
        raise ValueError(f"pue must be >= 1 (facility energy / IT energy), got {pue}")


def carbon_g(energy_j: float | None = None, *, kwh: float | None = None,
             intensity_g_per_kwh: float = WORLD_AVERAGE_G_PER_KWH, pue: float = 1.0) -> float:
    """Grams CO2eq for `energy_j` Joules (or `kwh`): kWh × pue × intensity."""
    _check(intensity_g_per_kwh, pue)
    return _kwh(energy_j, kwh) * pue * intensity_g_per_kwh


def intensity_for_country(country: str) -> float:
    """Annual-average grid intensity (gCO2eq/kWh) for an ISO 3166-1 alpha-2 code; ValueError for unknown codes."""
    code = _ALIASES.get(country.strip().upper(), country.strip().upper())
    if code not in GRID_INTENSITY_G_PER_KWH:
        raise ValueError(f"no grid intensity for country {country!r}; known ISO codes: "
                         f"{', '.join(sorted(GRID_INTENSITY_G_PER_KWH))}. Set profile.intensity_g_per_kwh instead.")
    return GRID_INTENSITY_G_PER_KWH[code]


@dataclasses.dataclass(frozen=True)
class Grid:
    """Where the energy was drawn: grid intensity (gCO2eq/kWh), where that figure came from, and the facility PUE."""

    intensity_g_per_kwh: float = WORLD_AVERAGE_G_PER_KWH
    intensity_source: str = WORLD_AVERAGE_SOURCE
    pue: float = 1.0

    def __post_init__(self) -> None:
        _check(self.intensity_g_per_kwh, self.pue)

    def grams(self, energy_j: float | None = None, *, kwh: float | None = None) -> float:
        """Grams CO2eq for `energy_j` Joules (or `kwh`) on this grid."""
        return _kwh(energy_j, kwh) * self.pue * self.intensity_g_per_kwh

    def describe(self) -> dict[str, Any]:
        """The grid as JSON, labelled an estimate (for a run summary)."""
        return {**dataclasses.asdict(self), "kind": "estimate: annual-average grid intensity, not a measurement"}

    def estimate(self, energy_j: float | None = None, *, kwh: float | None = None) -> CarbonEstimate:
        """The carbon estimate for `energy_j` Joules (or `kwh`) on this grid."""
        value = _kwh(energy_j, kwh)
        return CarbonEstimate(kwh=value, pue=self.pue, intensity_g_per_kwh=self.intensity_g_per_kwh,
                              intensity_source=self.intensity_source,
                              g_co2eq=self.grams(kwh=value))


def grid(country: str = "", intensity_g_per_kwh: float | None = None, pue: float = 1.0) -> Grid:
    """Resolves the intensity as the module docstring says: explicit non-default value, else country, else 475."""
    if intensity_g_per_kwh is not None and intensity_g_per_kwh != WORLD_AVERAGE_G_PER_KWH:
        return Grid(float(intensity_g_per_kwh), "explicit intensity_g_per_kwh", float(pue))
    if country:
        code = _ALIASES.get(country.strip().upper(), country.strip().upper())
        return Grid(intensity_for_country(code), f"{code}: {GRID_INTENSITY_SOURCE}", float(pue))
    return Grid(WORLD_AVERAGE_G_PER_KWH, WORLD_AVERAGE_SOURCE, float(pue))


def from_profile_config(profile: Any) -> Grid:
    """The `Grid` of a config's `profile` section (`country`, `intensity_g_per_kwh`, `pue`; missing fields default).

    Accepts an ml_collections ConfigDict, a dict, or any object with those attributes.
    """
    def get(key: str, default: Any) -> Any:
        value = profile.get(key, default) if hasattr(profile, "get") else getattr(profile, key, default)
        return default if value is None else value

    return grid(country=get("country", ""), intensity_g_per_kwh=get("intensity_g_per_kwh", None),
                pue=get("pue", 1.0))
