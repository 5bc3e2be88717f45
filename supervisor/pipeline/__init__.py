"""Stages run in order, each on the engine: an experiment's prediction."""
