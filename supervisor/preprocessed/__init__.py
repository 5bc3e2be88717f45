"""nnU-Net's preprocessed data: is every training case there, whole and readable?"""
