"""Stage 1, `segpipe prepare`: raw challenge folder → validated, reoriented, normalised coarse and
fine samples (pipeline.sample_arrays: int16 + zstd by default) indexed in WORK/index.lmdb, resumably.

One job per module: layouts (detection and case discovery), validate (reading and the checks
that reject a case), process (one case end to end), store (atomic sample array files), splits
(deterministic folds), runner (worker pool, index commits, report). The read side is
pipeline.samples.SampleStore; the pure functions shared with predict are in pipeline.preprocess.
"""
