"""Disk space: what a run or an experiment will still write, against what is free where it goes (`check`), and what
`clean` may remove of finished folds. Plain Python over files: no torch, no numpy."""
