"""Calibration: torch microbenchmarks on the host -> fitted efficiency curves -> a calibration
file that overlays a hardware profile (DESIGN.md, "What calibrated means").

``store`` and ``fit`` need no torch and are what simulations use; ``bench``, ``calibrate``
and ``hostruns`` import torch and are loaded only by `dlsim calibrate` and `dlsim validate`.
"""
