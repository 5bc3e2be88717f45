"""nnU-Net's prediction outputs: is every case `nnUNetv2_predict` wrote whole, and is it the prediction of its input?

A predictor killed mid-write leaves a torn file, and `--continue_prediction` skips every case whose output merely
exists, so a relaunch would keep it as done. Before each relaunch (and at the end) `verify_outputs` (verify.py)
reads every existing output in a subprocess (read.py: SimpleITK, numpy, nnU-Net's reader-writers) and says, per
case, whether it is whole; cases.py holds nnU-Net's file naming and the cache of outputs verified already. Only
read.py imports numpy or SimpleITK, and nothing imports read.py: it runs as `python -m`.
"""
