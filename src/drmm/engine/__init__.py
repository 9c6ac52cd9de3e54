"""Training, evaluation and post-processing engine."""
