"""Share of a DIP-DKP outer iteration spent outside the DIP network (RKS scoring, kernel-net
steps), measured as 1 - t(non-blind step) / t(blind step):

    python benchmarks/dkp_step_share.py --preset cpu --rounds 6

The non-blind step (`fixed_kernel=True`) is the same outer iteration with the same DIP
forward/backward/Adam steps and data losses, minus everything that touches the kernel. Both
steps run interleaved round by round (load hits both alike); medians are printed.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import kfsr  # noqa: E402,F401
from kfsr import data  # noqa: E402
from kfsr.api import default_config  # noqa: E402
from kfsr.methods import dkp  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--rounds", type=int, default=6)
    a = ap.parse_args()
    case = data.load_set(os.path.join(data.SHARED_DATA, "set5_c224_x4_dkp"), 1)[0]
    lr, kt = jnp.asarray(case.lr), jnp.asarray(case.kernel)
    c = default_config("dkp", a.preset)
    state, step, times = {}, {}, {}
    for name in ("blind", "fixed"):
        fixed = name == "fixed"
        state[name] = dkp.init(c, lr, jax.random.key(0), kernel=kt if fixed else None)
        step[name] = jax.jit(dkp.make_step(c, lr, fixed_kernel=fixed))
        state[name], _ = step[name](state[name])  # compile
        jax.block_until_ready(state[name])
        times[name] = []
    for _ in range(a.rounds):
        for name in ("blind", "fixed"):
            t = time.perf_counter()
            state[name], _ = step[name](state[name])
            jax.block_until_ready(state[name])
            times[name].append(time.perf_counter() - t)
    b, f = np.median(times["blind"]), np.median(times["fixed"])
    print(f"preset={a.preset}, {case.name} 224x224 x4: blind step {b:.3f} s, non-blind step {f:.3f} s "
          f"(medians of {a.rounds}); outside the DIP: {100 * (1 - f / b):.1f} %")


if __name__ == "__main__":
    main()
