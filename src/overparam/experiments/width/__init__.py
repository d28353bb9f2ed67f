"""How the network's size changes memorisation: `overparam width` (see command.py)."""
