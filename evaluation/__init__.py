"""The organisers' evaluation, reproduced locally (issue #7).

surface: DeepMind surfel distances / NSD / HD95 and medpy-style HD95; flare: FLARE22 DSC/NSD;
brats: legacy and 2023 (lesion-wise) Dice/HD95; matching: files by case name; results: the
JSON/CSV schema and the terminal table; efficiency: FLARE-style docker runs and accounting;
report: the self-contained HTML report.
"""
