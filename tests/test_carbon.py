"""Carbon arithmetic, the grid-intensity table, and resolving a config's profile section."""

import math
import types

import ml_collections
import pytest

from profiling import carbon
from profiling.energy import EnergyMeasurement


def test_carbon_g_is_kwh_times_pue_times_intensity():
    assert carbon.carbon_g(3.6e6) == pytest.approx(475.0)  # 1 kWh at the world-average default.
    assert carbon.carbon_g(kwh=2.0, intensity_g_per_kwh=100.0, pue=1.5) == pytest.approx(300.0)
    assert carbon.carbon_g(0.0) == 0.0
    assert math.isnan(carbon.carbon_g(math.nan))  # Unmeasured energy stays unmeasured.


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one"), ({"energy_j": 1.0, "kwh": 1.0}, "exactly one"), ({"energy_j": -1.0}, ">= 0"),
    ({"energy_j": 1.0, "pue": 0.9}, "pue"), ({"energy_j": 1.0, "intensity_g_per_kwh": -5.0}, "intensity")])
def test_carbon_g_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        carbon.carbon_g(**kwargs)


def test_table_is_iso_coded_and_plausible():
    table = carbon.GRID_INTENSITY_G_PER_KWH
    assert {"US", "CN", "IN", "DE", "FR", "GB", "SE", "NO", "PL", "AU", "JP", "CA", "BR"} <= set(table)
    assert all(len(code) == 2 and code.isupper() and 0 < g < 1000 for code, g in table.items())
    assert table["FR"] < table["DE"] < table["PL"]  # Nuclear < mixed < coal-heavy.


def test_country_lookup():
    assert carbon.intensity_for_country("fr") == carbon.GRID_INTENSITY_G_PER_KWH["FR"]
    assert carbon.intensity_for_country(" UK ") == carbon.GRID_INTENSITY_G_PER_KWH["GB"]
    with pytest.raises(ValueError, match="no grid intensity for country 'XX'; known ISO codes: AU, BR"):
        carbon.intensity_for_country("XX")


def test_grid_resolution_order():
    assert carbon.grid() == carbon.Grid(475.0, carbon.WORLD_AVERAGE_SOURCE, 1.0)
    fr = carbon.grid(country="fr", pue=1.2)
    assert (fr.intensity_g_per_kwh, fr.pue) == (56.0, 1.2) and fr.intensity_source.startswith("FR: Ember 2023")
    assert carbon.grid(country="FR", intensity_g_per_kwh=475.0).intensity_g_per_kwh == 56.0  # Default = unset.
    explicit = carbon.grid(country="FR", intensity_g_per_kwh=120.0)
    assert (explicit.intensity_g_per_kwh, explicit.intensity_source) == (120.0, "explicit intensity_g_per_kwh")
    with pytest.raises(ValueError, match="pue"):
        carbon.grid(pue=0.5)


@pytest.mark.parametrize("profile", [
    ml_collections.ConfigDict({"country": "SE", "intensity_g_per_kwh": 475.0, "pue": 1.1}),
    {"country": "SE", "pue": 1.1},
    types.SimpleNamespace(country="SE", intensity_g_per_kwh=None, pue=1.1)])
def test_from_profile_config(profile):
    assert carbon.from_profile_config(profile) == carbon.Grid(41.0, "SE: " + carbon.GRID_INTENSITY_SOURCE, 1.1)


def test_from_profile_config_defaults_and_unknown_country():
    assert carbon.from_profile_config(ml_collections.ConfigDict()) == carbon.grid()
    with pytest.raises(ValueError, match="'ZZ'"):
        carbon.from_profile_config({"country": "ZZ"})


def test_estimate_from_a_measurement():
    m = EnergyMeasurement("train", 100.0, {"gpu0": 3.0e6}, {"package-0": 0.6e6}, {"gpu0": "fake", "package-0": "fake"})
    estimate = carbon.grid(country="DE", pue=1.5).estimate(m.total_j)
    assert estimate.kwh == pytest.approx(1.0)
    assert estimate.g_co2eq == pytest.approx(1.0 * 1.5 * 381.0)
    assert estimate.to_dict()["intensity_source"].startswith("DE: ")
    grid = carbon.grid(country="DE", pue=1.5)
    assert grid.grams(m.total_j) == pytest.approx(estimate.g_co2eq)
    assert grid.describe()["intensity_g_per_kwh"] == 381.0 and "estimate" in grid.describe()["kind"]
    unmeasured = EnergyMeasurement("train", 100.0, {}, {}, {})
    assert carbon.grid().estimate(unmeasured.total_j).to_dict()["g_co2eq"] is None
