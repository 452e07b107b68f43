"""Recipes (YAML) and the data generators they name."""
