"""Training engine shared by the coarse and fine stages (losses, schedules, AMP, DDP, checkpoints, CPS, UIF)."""
