"""kfsr.parallel: a DIP-DKP batch sharded over 4 forced host devices equals the 1-device run."""
import json

import jax
import numpy as np

from kfsr import parallel

_CHILD = r"""
import json, os, sys
import jax, jax.numpy as jnp, numpy as np
assert jax.device_count() == 4, jax.devices()
from configs import dkp as dkp_configs
from kfsr.degrade import kernels as kern, ops
from kfsr.methods import dkp

c = dkp_configs.get_config("test")
c.scale = 2
c.schedule.outer_iters = 3
c.schedule.i_loop_x = 1  # one unrolled DIP step: the cheapest compile, same code path
c.schedule.i_loop_k = 1
c.pke.warmup_steps = 20
rng = np.random.default_rng(0)
# four different smooth 32x32 images (blurred noise), degraded with one Gaussian kernel
hr = jnp.asarray(rng.random((4, 32, 32, 3)), jnp.float32)
k = kern.gaussian_from_params(11, 2.0, 4.0, 0.3, kern.target_center(11, 2, "dkp"))
hr = jax.vmap(lambda x: ops.blur(x, jnp.ones((3, 3)) / 9, padding="circular"))(hr)
lrs = jax.vmap(lambda x: ops.downsample(ops.blur(x, k, padding="circular"), 2))(hr)
one = dkp.run_batch(c, lrs, jax.random.key(3), progress=False, num_devices=1)
four = dkp.run_batch(c, lrs, jax.random.key(3), progress=False, num_devices=4)
shard = four.hr.sharding
print(json.dumps({
    "devices": sorted(d.id for d in shard.device_set),
    "dx": float(jnp.abs(one.hr - four.hr).mean()),
    "dx_max": float(jnp.abs(one.hr - four.hr).max()),
    "dk": float(jnp.abs(one.kernel - four.kernel).max()),
    "kmax": float(one.kernel.max()),
    "between_images": float(jnp.abs(one.hr[0] - one.hr[1]).mean()),
}))
"""


def test_usable_devices_divides_batch():
    assert parallel.usable_devices(6, 4) == 3
    assert parallel.usable_devices(5, 4) == 1
    assert parallel.usable_devices(8, 4) == 4
    assert parallel.usable_devices(2, None) == min(2, jax.device_count())


def test_sharded_batch_on_4_devices_equals_single_device(run_on_forced_devices):
    out = run_on_forced_devices(_CHILD, 4)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["devices"] == [0, 1, 2, 3]  # the result really lives on 4 devices
    # same numbers up to float rounding (per-device convolutions may round differently);
    # the images differ from each other by far more than that
    assert r["dx"] < 1e-3 and r["dx_max"] < 0.05, r
    assert r["dk"] < 0.02 * r["kmax"], r
    assert r["between_images"] > 50 * r["dx"], r
