"""Whole jobs composed from the layers below (train, evaluate, experiments, demo); the CLI calls these."""
