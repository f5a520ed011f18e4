"""jaxlm.scaling: scaling laws. flops.py (parameter counts and training FLOPs of any config,
through Model.flops_per_token), laws.py (Kaplan power laws, the Chinchilla fit, bootstrap
intervals), planner.py (compute-optimal N and D for a budget, the closest model file),
sweep.py (model sizes x token budgets trained as ordinary train() runs, then fitted).
The fits need scipy (the `eval` extra); importing this package does not."""
from jaxlm.scaling.flops import ModelSize, model_config, model_size, training_flops
from jaxlm.scaling.laws import (ChinchillaLaw, PowerLaw, bootstrap_chinchilla, fit_chinchilla,
                                fit_power_law, frontier, kaplan_fits)
from jaxlm.scaling.planner import Plan, closest_model, compute_optimal

__all__ = ["ModelSize", "model_config", "model_size", "training_flops", "ChinchillaLaw", "PowerLaw",
           "bootstrap_chinchilla", "fit_chinchilla", "fit_power_law", "frontier", "kaplan_fits", "Plan",
           "closest_model", "compute_optimal"]
