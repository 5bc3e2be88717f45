"""Prediction as a stage: nnUNetv2_predict over an input folder, every output verified against its input."""
