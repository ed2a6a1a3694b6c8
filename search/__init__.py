"""Hyperparameter search for transformer training, on Optuna."""

from search.spec import SpecError, StudySpec, load_spec

__all__ = ["SpecError", "StudySpec", "load_spec"]
