"""Submission checks and artefacts: the prediction-folder contract, zip archives, the FLARE
image tarball, BraTS MLCube files and the grand-challenge upload."""
