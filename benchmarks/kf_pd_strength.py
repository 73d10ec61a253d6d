"""How good a denoiser of the HR image is the KernelFusion PD, by Phase-1 length and width?

    python benchmarks/kf_pd_strength.py bird l_shape 16:2400 32:800
    (args: Set5 image, kfsr.data kernel family, width:steps pairs; evaluated every 800 steps)

The PD is trained (cpu preset otherwise) on the LR image of Set5 <image> (centre crop 224, x4, the
family's kernel in DKP's convention and forward model, 8-bit), exactly as Phase 1 does. Then the
true HR image (in [-1, 1]) is noised to t with a fixed eps and denoised in one shot,
x0 = sqrt(abar) x_t - sqrt(1 - abar) PD(x_t, t); the table gives PSNR-Y (shave 4) of that x0
against the true HR image and of the plain rescaled input x_t / sqrt(abar). Phase 2 starts from
such a noised image, so this bounds what the PD can give back at each t_start.
"""
import json, os, sys, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import jax, jax.numpy as jnp, numpy as np  # noqa: E402
from configs import kernelfusion as kc  # noqa: E402
from kfsr import io, metrics  # noqa: E402
from kfsr.data import center_crop, make_kernel  # noqa: E402
from kfsr.degrade import degrade, Degradation, kernels  # noqa: E402
from kfsr.diffusion.param import q_sample, x0_from_v  # noqa: E402
from kfsr.methods import kernelfusion as kf  # noqa: E402

TS = (9, 49, 99, 199)


def main():
    name, fam = sys.argv[1], sys.argv[2]
    runs = [tuple(int(v) for v in a.split(":")) for a in sys.argv[3:]] or [(16, 2400)]
    s = 4
    hr = center_crop(io.load_image(f"/work/shared/data/Set5/HR/{name}.png"), 224)
    k_true = make_kernel(fam, jax.random.key(0), s, kernels.dkp_kernel_size(s))
    lr = np.round(np.clip(np.asarray(degrade(hr, k_true, Degradation.dkp(s))), 0, 1) * 255) / 255
    x_hr = jnp.asarray(2.0 * hr - 1.0)[None]
    eps = jax.random.normal(jax.random.key(7), x_hr.shape)
    for width, steps in runs:
        c = kc.get_config("cpu")
        c.pd.width, c.phase1.steps = width, steps
        c.loop.chunk = 100
        setup = kf.make_setup(c, channels=3, lr_shape=lr.shape[:2])
        sched = setup.sched()

        def score(params):
            row = {}
            for t in TS:
                tt = jnp.full((1,), t, jnp.int32)
                xt = q_sample(sched, x_hr, tt, eps)
                x0 = x0_from_v(sched, xt, tt, setup.pd.apply(params, xt, tt))
                naive = xt / float(sched.sqrt_alphas_cumprod[t])
                f = lambda z: float(metrics.psnr_y(np.clip((np.asarray(z[0]) + 1) / 2, 0, 1), hr, s))
                row[t] = (round(f(x0), 2), round(f(naive), 2))
            return row

        rows = {}

        def on_chunk(phase, step, state, history):
            if step % 800 == 0:
                rows[step] = score(state["ema"])
                print(f"width {width} step {step}: " + "  ".join(
                    f"t{t} {a:.2f} (in {b:.2f})" for t, (a, b) in rows[step].items()), flush=True)

        t0 = time.time()
        kf.train_pd(c, jnp.asarray(lr), jax.random.key(0), progress=False, on_chunk=on_chunk)
        print(f"width {width}: {steps} steps in {time.time() - t0:.0f} s", flush=True)
        # after every run (a long list may be stopped part-way)
        os.makedirs("results/kf_variants", exist_ok=True)
        path = f"results/kf_variants/pd_strength_{name}_{fam}.json"
        old = json.load(open(path)) if os.path.isfile(path) else {}
        old[f"{width}:{steps}"] = {"rows": rows, "seconds": round(time.time() - t0, 1)}
        io.write_text(path, json.dumps(old, indent=1))


if __name__ == "__main__":
    main()
