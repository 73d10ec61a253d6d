"""What the KernelFusion `paper` preset would cost on this machine, from timed steps.

    python benchmarks/kf_paper_cost.py [--lr-size 64] [--scale 4]

Times jitted Phase-1 steps (PD training) and Phase-2 steps (one inner step at HR size) of the
`cpu` and `paper` presets on a lr-size x lr-size crop of Set5 bird (compile excluded; median of 3
steps after one warm-up) and extrapolates to each preset's step counts. The paper preset is the
reconstruction in configs/kernelfusion.py (PD 128 channels, 600k x 32 crops; Phase 2 100 + 20 x 199
inner steps with a 4-level 32-512 U-Net), kept for GPU/TPU users.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from configs import kernelfusion as kc  # noqa: E402
from kfsr import io  # noqa: E402
from kfsr.data import center_crop  # noqa: E402
from kfsr.methods import kernelfusion as kf  # noqa: E402


def timed(step, state, n=3):
    state, _ = step(state)
    jax.block_until_ready(state)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        state, _ = step(state)
        jax.block_until_ready(state)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lr-size", type=int, default=64)
    p.add_argument("--scale", type=int, default=4)
    a = p.parse_args()
    lr = jnp.asarray(center_crop(io.load_image(
        os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "Set5", "HR", "bird.png")),
        a.lr_size))
    print("| preset | Phase-1 step s | Phase-1 steps | Phase-1 h | Phase-2 step s | Phase-2 steps | Phase-2 h |")
    print("|---|---|---|---|---|---|---|")
    for preset in ("cpu", "paper"):
        c = kc.get_config(preset)
        c.scale = a.scale
        setup = kf.make_setup(c, channels=3, lr_shape=lr.shape[:2])
        st1 = kf._jit_o0(kf._p1_init, setup, lr, jax.random.key(0))
        s1 = timed(jax.jit(kf._p1_step_fn(setup)), st1)
        pd = st1["pd"]
        del st1
        st2 = kf._jit_o0(kf._p2_init, setup, lr, pd, jax.random.key(1), None)
        s2 = timed(jax.jit(kf._p2_step_fn(setup)), st2)
        print(f"| {preset} | {s1:.3f} | {setup.p1_steps} | {s1 * setup.p1_steps / 3600:.1f} | {s2:.3f} | "
              f"{setup.p2_steps} | {s2 * setup.p2_steps / 3600:.2f} |", flush=True)


if __name__ == "__main__":
    main()
