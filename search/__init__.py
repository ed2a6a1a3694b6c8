"""Hyperparameter search for transformer training, on Optuna.

By layer, top down: ``cli/`` (the commands); ``cluster/`` (many GPUs and machines) and
``results/`` (export, confirmation); ``running/`` (the worker and the trial runner);
``dashboard/`` (notes and plots); ``study.py`` and ``summary.py`` (a study built from its spec,
and what it holds); ``spec.py`` (the study spec).
"""

from search.spec import SpecError, StudySpec, load_spec

__all__ = ["SpecError", "StudySpec", "load_spec"]
