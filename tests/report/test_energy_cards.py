"""The training and collective pages lead with energy and cost, in human units."""

from __future__ import annotations

import dlsim
from dlsim.report.kinds import render_run
from dlsim.report.units import format_energy, format_power, format_usd


def test_units_of_energy_power_and_money():
    assert format_energy(573.43) == "573 J"
    assert format_energy(0.0021875) == "2.19 mJ"
    assert format_energy(7.2e6) == "2 kWh"
    assert format_power(271.64) == "272 W"
    assert format_power(8400.0) == "8.4 kW"
    assert format_usd(1234.567) == "1,234.57 USD"
    assert format_usd(0.0030023) == "0.003 USD"


def test_training_headline_shows_energy_and_cost_per_step_and_token():
    result = dlsim.simulate("scenarios/quickstart.yaml")
    s = result.summary
    html = render_run(result)
    assert "Energy per step" in html and "Cost per step" in html
    assert format_energy(s["energy_per_step_J"]).split()[0] in html
    assert f"average {format_power(s['average_power_W'])} per device" in html
    assert f"{format_energy(s['energy_per_token_J'])} per token" in html


def test_collective_headline_shows_its_energy():
    result = dlsim.simulate("scenarios/allreduce-dgx-a100.yaml")
    html = render_run(result)
    assert ">Energy<" in html and format_energy(result.summary["energy_J"]).split()[0] in html
