"""Hardware: device, link and system profiles, and the topology graph with its routing."""
