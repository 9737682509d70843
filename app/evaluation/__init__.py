"""Evaluation: what a policy earned, or would have (off-policy estimates on logged decisions)."""
