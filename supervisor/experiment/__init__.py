"""A whole nnU-Net experiment (configurations x folds, then find_best_configuration) under one supervisor that
starts each fold as a fold supervisor of its own."""
