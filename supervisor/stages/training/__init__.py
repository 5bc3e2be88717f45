"""Training as a stage: one fold of nnUNetv2_train (its sensors, its launcher with the checkpoint verification,
its remedies)."""
