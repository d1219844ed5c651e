"""Explanations of model decisions: counterfactual explanations and their robustness."""
