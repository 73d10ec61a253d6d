"""DIP-DKP with a motion-blur kernel prior (paper §5, "Gaussian and motion kernel scenarios").

    python run.py --config=configs/dkp_motion.py --input=lr.png            # cpu preset
    python run.py --config=configs/dkp_motion.py:paper --input=lr.png

Everything as configs/dkp.py (same presets and schedule) except the RKS kernel family:

- `rks.family = 'motion_traj'`: random camera-shake trajectories (Boracchi & Foi 2012, the
  generator of DeblurGAN [22] that the paper cites for its motion experiments), rasterised
  sub-pixel with the centre of mass at DKP's (K - s)/2 (kfsr.degrade.kernels.trajectory_motion).
  The released code has no trajectory generator: its motion branches (`DIPDKP-motion`, a rotated
  9-px line; `DIPDKP-random-motion`, .mat banks that are not shipped) exist in `MCMC_sampling` but
  are not wired into `train()` (dkp.md §3.5, §5, §10.14). `'motion_line'` gives the line prior.
- The kernel-net warm-up draws from the same family (as the code's `MC_warm_up` does for
  whichever family `MCMC_sampling` implements).
- Diff-DKP's released code comments "kp_lr 5e-4 for Gaussian, 5e-3 for Motion line" (dkp.md §4.3);
  DIP-DKP has no motion setting, so the kernel-net lr stays at DIP-DKP's 1e-4.
- `rks.mode = 'mcmc'` works with motion too: random walk on (length, angle) for 'motion_line',
  independence proposals (fresh prior draws) for 'motion_traj'.
"""
import importlib.util
import os

# configs/dkp.py, loaded by path: config files are also loaded by path (ml_collections config_flags)
_spec = importlib.util.spec_from_file_location(
    "_kfsr_configs_dkp", os.path.join(os.path.dirname(os.path.abspath(__file__)), "dkp.py"))
_dkp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_dkp)


def get_config(preset: str = "cpu"):
    c = _dkp.get_config(preset)
    c.rks.family = "motion_traj"
    return c
