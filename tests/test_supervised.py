"""kfsr.train.supervised: the data pipeline, resume bit-identity (BlindDiff's tiny MCFormer), data
parallelism over 2 forced host devices and the loss-spike guard (with a small kernel-regression
task, so the subprocess compiles in seconds)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import blinddiff as bd_configs
from kfsr.degrade import Degradation, degrade, quantize
from kfsr.train import supervised as sup


def _config(**train):
    c = bd_configs.get_config("test")
    for k, v in train.items():
        c.train[k] = v
    return c


@pytest.fixture(scope="module")
def pipeline():
    c = _config()
    c.data.kernel.rate_iso = 0.5  # both branches of the kernel family
    return sup.make_pipeline(c)


def test_pipeline_deterministic_and_uses_the_forward_model(pipeline):
    p = pipeline
    a, b, other = p.host(3), p.host(3), p.host(4)
    for k in a:
        assert np.array_equal(a[k], b[k]), k          # a function of (seed, step)
    assert not np.array_equal(a["hr"], other["hr"])   # a fresh draw per step
    batch = p.batch(3)
    hr, lr, k = (np.asarray(batch[n]) for n in ("hr", "lr", "kernel"))
    n, size = p.batch_size, p.crop
    assert hr.shape == (n, size, size, 3) and lr.shape == (n, size // 4, size // 4, 3)
    assert k.shape == (n, 21, 21) and np.all(k >= 0)
    np.testing.assert_allclose(k.sum(axis=(1, 2)), 1.0, atol=1e-5)
    # LR = quantise(bicubic_down_4(reflect blur)), recomputed through the public API
    ref = quantize(degrade(jnp.asarray(hr), jnp.asarray(k), Degradation.blinddiff(4)))
    np.testing.assert_allclose(lr, np.asarray(ref), atol=1e-6)
    np.testing.assert_allclose(lr * 255, np.round(lr * 255), atol=1e-4)  # 8-bit levels
    # kernel parameters: isotropic std in [0.2, 4] (symmetric kernels), anisotropic in [0.6, 5]
    iso = a["k_noise"].reshape(n, -1).max(1) == 0
    assert iso.any() and (~iso).any()
    sig = a["k_sigma"]
    assert np.all((sig[iso] >= 0.2) & (sig[iso] <= 4.0)) and np.all(sig[iso, 0] == sig[iso, 1])
    assert np.all((sig[~iso] >= 0.6) & (sig[~iso] <= 5.0))
    assert np.all(a["k_noise"] <= 0.25) and np.all(a["k_noise"] >= 0.0)
    ki = k[iso]
    np.testing.assert_allclose(ki, ki[:, ::-1, ::-1], atol=1e-7)
    np.testing.assert_allclose(ki, np.swapaxes(ki, 1, 2), atol=1e-7)
    grid = np.arange(21) - 10.0
    com = np.einsum("bij,i->b", ki, grid), np.einsum("bij,j->b", ki, grid)
    np.testing.assert_allclose(com, 0.0, atol=1e-5)   # centred at (K-1)/2


def test_resume_is_bit_identical(tmp_path):
    """20 steps straight vs 10 steps (interrupted after a checkpoint) + a resumed run, same
    workdir: identical parameters, EMA, optimiser state, counters and history."""
    c = _config(steps=20, chunk=5, checkpoint_every=2)
    ref = sup.train(c, str(tmp_path / "a"), progress=False)

    class Stop(Exception):
        pass

    def stop_at_10(done, state, history):
        if done == 10:
            raise Stop

    with pytest.raises(Stop):
        sup.train(c, str(tmp_path / "b"), progress=False, on_chunk=stop_at_10)
    done = json.load(open(tmp_path / "b" / "history.json"))["steps_done"]
    assert done == 10  # the model was exported with the checkpoint at step 10
    res = sup.train(c, str(tmp_path / "b"), progress=False)
    la, lb = jax.tree.leaves(ref.state), jax.tree.leaves(res.state)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.array_equal(np.asarray(x), np.asarray(y))
    assert [h["loss"] for h in ref.history] == [h["loss"] for h in res.history]
    assert int(res.state["step"]) == int(res.state["data_step"]) == 20
    assert os.path.isdir(tmp_path / "b" / "model")
    # wall-clock budget (train.max_minutes): a budget that is already spent stops the run at the
    # first checkpointed chunk (step 10), exported; the resumed run ends as the straight one
    c.train.max_minutes = 1e-9
    part = sup.train(c, str(tmp_path / "c"), progress=False)
    assert part.budget_stop and len(part.history) == int(part.state["step"]) == 10
    assert json.load(open(tmp_path / "c" / "history.json"))["steps_done"] == 10
    c.train.max_minutes = 0.0
    res_c = sup.train(c, str(tmp_path / "c"), progress=False)
    assert not res_c.budget_stop
    assert [h["loss"] for h in res_c.history] == [h["loss"] for h in ref.history]
    assert np.array_equal(np.asarray(res_c.state["ema"]), np.asarray(ref.state["ema"]))
    # warm start (train.init_from): a new run in a new workdir starts from run a's exported EMA
    # weights, with a fresh optimiser and counters (same seed and data stream as run a, so only
    # the starting weights differ: the first loss is not run a's first loss)
    c.train.steps, c.train.init_from = 5, str(tmp_path / "a")
    warm = sup.train(c, str(tmp_path / "d"), progress=False)
    assert int(warm.state["step"]) == int(warm.state["data_step"]) == 5
    assert warm.history[0]["loss"] != ref.history[0]["loss"]
    setup = sup.cached_setup(c)
    s0 = sup.warm_start(setup, sup.init_state(setup, jax.random.key(0)), str(tmp_path / "a" / "model"))
    assert np.array_equal(np.asarray(s0["ema"]), np.asarray(ref.state["ema"]))
    assert int(s0["step"]) == 0
    c.train.init_from = str(tmp_path / "missing")
    with pytest.raises(ValueError, match="init_from"):
        sup.train(c, str(tmp_path / "e"), progress=False)


_CHILD = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
import flax.linen as nn
assert jax.device_count() == 2, jax.devices()
from configs import blinddiff as bd_configs
from kfsr.train import supervised as sup

class KernelNet(nn.Module):  # LR -> softmax kernel: a small supervised task
    @nn.compact
    def __call__(self, lr):
        h = nn.relu(nn.Conv(8, (3, 3))(lr)).mean(axis=(1, 2))
        return jax.nn.softmax(nn.Dense(21 * 21)(h), axis=-1)

net = KernelNet()
def loss(params, data, keys):
    jitter = jax.vmap(lambda k: jax.random.uniform(k, ()))(keys)   # per-example randomness
    k_hat = net.apply(params, data["lr"] * (1 + 0.01 * jitter[:, None, None, None]))
    err = jnp.mean(jnp.square(k_hat - data["kernel"].reshape(len(k_hat), -1)))
    return 1e4 * err, {"kernel_mse": err}
task = sup.Task("toy", lambda k: net.init(k, jnp.zeros((1, 8, 8, 3))), loss, {})
c = bd_configs.get_config("test")
c.train.steps, c.train.chunk, c.train.lr = 6, 3, 1e-2
c.data.max_images = 2
out = {}
pipe = sup.make_pipeline(c)
for n in (1, 2):
    setup = sup.make_setup(c, pipeline=pipe, num_devices=n, task=task)
    res = sup.train(c, None, progress=False, setup=setup)
    out[n] = dict(devices=setup.num_devices, loss=[h["loss"] for h in res.history],
                  params=np.concatenate([np.ravel(x) for x in jax.tree.leaves(res.params)]))
# loss-spike guard: an update whose loss exceeds spike_factor x the last accepted one is skipped
# (the 2-device setup's programs, already compiled by the run above: init and the loop's step)
from kfsr.train import loop
def one_step(last_loss):
    st = sup.init_state(setup, jax.random.key(0))
    p0 = [np.asarray(x) for x in jax.tree.leaves(st["params"])]
    st = dict(st, last_loss=jnp.full((), last_loss, jnp.float32))
    st, hist = loop.run(sup.make_step_cached(setup), st, 1, chunk=1, progress=False)
    same = all(np.array_equal(a, np.asarray(b)) for a, b in zip(p0, jax.tree.leaves(st["params"])))
    return same, st, hist[-1]
same, st2, m = one_step(1e-12)
same3, st3, m3 = one_step(np.inf)
moved = not same3
print(json.dumps({"devices": [out[1]["devices"], out[2]["devices"]],
                  "loss1": out[1]["loss"], "loss2": out[2]["loss"],
                  "dparams": float(np.abs(out[1]["params"] - out[2]["params"]).max()),
                  "moved": float(np.abs(out[1]["params"]).max()),
                  "spike": [bool(same), int(st2["skipped"]), float(m["accepted"]), bool(moved), float(m3["accepted"])]}))
"""


def test_data_parallel_two_devices_equals_one_and_spike_guard(run_on_forced_devices):
    """The batch split over 2 forced host devices (shard_map + pmean) gives the 1-device run's
    losses and parameters up to float rounding; the spike guard skips an update."""
    out = run_on_forced_devices(_CHILD, 2)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["devices"] == [1, 2]
    np.testing.assert_allclose(r["loss1"], r["loss2"], rtol=1e-5)
    assert r["loss1"][-1] < r["loss1"][0]           # it trains
    assert r["dparams"] < 1e-5 * max(1.0, r["moved"]), r
    assert r["spike"] == [True, 1, 0.0, True, 1.0], r
