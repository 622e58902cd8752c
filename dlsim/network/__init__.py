"""Communication: the network model and the lowering of collectives into phases of flows."""
