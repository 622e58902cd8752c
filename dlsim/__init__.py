"""dlsim: a discrete-event performance simulator and capacity planner for distributed deep
learning. ``dlsim.simulate(path_or_dict)`` runs one scenario and returns a ``Result``."""

from dlsim.contract.errors import ScenarioError
from dlsim.results.result import Result
from dlsim.simulate import simulate

__all__ = ["Result", "ScenarioError", "simulate"]
__version__ = "0.1.0"
