"""BlindDiff's kernel head beats the mean kernel (its own file: ~2-3 min of training, so that
pytest-xdist's --dist loadfile runs it beside tests/test_blinddiff.py)."""
import jax
import jax.numpy as jnp
import numpy as np

from configs import blinddiff as bd_configs
from kfsr.diffusion.param import q_sample
from kfsr.methods import blinddiff as bd
from kfsr.train import supervised as sup
from _kernel_baseline import mean_kernel_mse  # noqa: E402  (tests/)


def test_kernel_head_beats_the_mean_kernel():
    """The tiny MCFormer's kernel estimate depends on the image and beats the family's mean kernel
    (the best constant guess): 1,200 training steps (batch 8, lr 1e-3, ~2-4 min on 2 cores) with
    the estimator options net.kernel_input_norm (contrast-normalised input halves), detach_kernel
    (trained by the kernel loss alone) and kernel_head_init 'mean_bias', on the test preset's
    isotropic family restricted to sigma in [1, 4] px. The held-out MSE of the last 30 steps and
    the fixed-t MSE of the final weights at t = 0 on 20 fresh batches are both below 0.93 x the
    mean kernel's (measured 0.86 / 0.88 with this seed; seeds 5 and 7: 0.81 / 0.82, 0.83 / 0.85).

    Why these settings (measured 2026-11-23, 20,000 draws and /tmp scripts): 68 % of the mean
    kernel's MSE on the paper's range sigma in [0.2, 4] comes from the 8 % of draws with
    sigma < 0.5, whose x4 LR differs from sigma 0.2's by 0.4/255 rms (below 8-bit quantisation):
    not identifiable from the data, hence [1, 4]. GAP + linear is linear in the image contrast
    (without kernel_input_norm the estimator stays at 1.00 x); a zero-weight head ('mean') gives
    the convs no gradient until the weights grow (~1,000 steps of plateau). With the code's
    settings (none of the three options, the full range) the head stays at 1.00-1.04 x after
    2,000 steps, and the cpu preset's 60-minute run at 1.000 x (its estimate varies by ~1e-7 per
    entry across a batch whose true kernels vary by 1.7e-3): the code's design does not find the
    kernel from the kernel loss on a CPU budget."""
    c = bd_configs.get_config("test")
    c.train.steps, c.train.chunk, c.train.checkpoint_every, c.train.lr = 1200, 100, 100, 1e-3
    c.net.kernel_input_norm = True
    c.net.detach_kernel = True
    c.net.kernel_head_init = "mean_bias"
    c.data.batch = 8
    c.data.kernel.iso_sigma = (1.0, 4.0)
    res = sup.train(c, None, progress=False)
    setup = sup.cached_setup(c)
    n = len(res.history)
    last = np.mean([h["kernel_mse"] for h in res.history[n - 30:]])
    base = mean_kernel_mse(setup, range(n - 30, n))
    assert last < 0.93 * base, (last, base, last / base)

    # the final weights at t = 0 on fresh batches (draws the training never saw)
    bsetup = bd.make_setup(c)
    sched, tmap = bsetup.schedules("train")
    mean_k = setup.pipeline.family.mean_kernel(n=2048, seed=99).reshape(1, -1)
    khat = jax.jit(lambda p, x, t, y: bsetup.net.apply(p, x, t, y)[1])
    errs, bases = [], []
    for j in range(20):
        b = setup.pipeline.batch(100_000 + j)
        x0, y = bsetup.to_model(b["hr"]), bsetup.to_model(b["lr"])
        x_t = q_sample(sched, x0, 0, jax.random.normal(jax.random.key(j), x0.shape))
        k = np.asarray(khat(res.state["params"], x_t, jnp.full((x0.shape[0],), tmap[0]), y))
        k_true = np.asarray(b["kernel"]).reshape(k.shape[0], -1)
        errs.append(np.mean((k - k_true) ** 2))
        bases.append(np.mean((k_true - mean_k) ** 2))
    assert np.mean(errs) < 0.93 * np.mean(bases), np.mean(errs) / np.mean(bases)
