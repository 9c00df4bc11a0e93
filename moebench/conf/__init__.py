"""The packaged Hydra configs (``pkg://moebench.conf``); see README, "Configuration"."""
