"""Ensembling and postprocessing, supervised."""
