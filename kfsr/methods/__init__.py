"""Methods: each module registers its `run` with kfsr.methods.base.register."""
from kfsr.methods import blinddiff, diff_dkp, dkp, kernelfusion, nonblind, ssr  # noqa: F401
