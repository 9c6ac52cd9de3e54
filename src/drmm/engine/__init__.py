"""Training: the loop, its reproducible data order, the schedule, distributed helpers and checkpoints."""
