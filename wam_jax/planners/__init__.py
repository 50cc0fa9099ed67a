"""Planners: a policy maps an observation to an ego-frame plan (baselines and the DriveWAM policy)."""
