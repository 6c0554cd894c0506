"""Inference: challenge modes and case discovery (`modes`), coarse → ROI (`roi`), Gaussian
sliding window (`sliding_window`), connected-component postprocessing (`postprocess`), the
per-case engine (`engine`) and the run over a folder (`runner`). Nothing heavy is imported here."""
