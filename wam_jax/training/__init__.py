"""Training: the flow-matching objective and the Trainer (data → training → checkpoint)."""
