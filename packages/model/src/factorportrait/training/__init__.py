"""Training utilities: flow-matching objective, EMA, atomic checkpoints and learning-rate schedules."""
