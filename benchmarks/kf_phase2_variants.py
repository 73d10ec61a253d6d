"""KernelFusion Phase-2 variants on one blind case, sharing one trained PD (Phase 1).

    python benchmarks/kf_phase2_variants.py bird l_shape base,unet_only,ginit,t49
    (args: Set5 image, kfsr.data kernel family, comma-separated variants from VAR below)

Set5 <image> centre crop 224, x4, the family's kernel (key 0) in DKP's convention, LR by DKP's
forward model (circular, stride) quantised to 8 bits; KernelFusion `cpu` preset with the same
forward model. Prints PSNR-Y (shave 4), LR-consistency PSNR and aligned kernel error per variant,
and the same after an exact closed-form data step with the estimated kernel (alpha 1e-3..1e-1).
Writes results/kf_variants/<image>_<family>.json (+ the PD, SR images, kernels).
Measured 2026-11-23 (bird, l_shape, 2 cores at load 7-10): see docs/BENCHMARKS.md.
"""
import json, os, sys, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import jax, jax.numpy as jnp, numpy as np  # noqa: E402
from configs import kernelfusion as kc
from kfsr import io, metrics
from kfsr.data import center_crop, make_kernel
from kfsr.degrade import degrade, Degradation, kernels
from kfsr.methods import kernelfusion as kf
from kfsr.methods.nonblind_fft import data_solve

OUT = "results/kf_variants"
os.makedirs(OUT, exist_ok=True)
name = sys.argv[1] if len(sys.argv) > 1 else "bird"
fam = sys.argv[2] if len(sys.argv) > 2 else "l_shape"
variants = sys.argv[3].split(",") if len(sys.argv) > 3 else ["base", "unet_only"]
s = 4
hr = center_crop(io.load_image(f"/work/shared/data/Set5/HR/{name}.png"), 224)
k_true = make_kernel(fam, jax.random.key(0), s, kernels.dkp_kernel_size(s))
spec = Degradation.dkp(s)
lr = np.round(np.clip(np.asarray(degrade(hr, k_true, spec)), 0, 1) * 255) / 255
def cfg(**p2):
    c = kc.get_config("cpu"); c.scale = s; c.padding = "circular"; c.offset = 0
    for k, v in p2.items():
        if "." in k: a, b = k.split("."); c[a][b] = v
        else: c.phase2[k] = v
    return c
def score(x, k):
    r = {"psnr_y": float(metrics.psnr_y(x, hr, s)),
         "lr_psnr": float(metrics.lr_consistency_psnr(x, k, lr, spec))}
    return r
pd_dir = f"{OUT}/pd_{name}_{fam}"
key = jax.random.key(0); k1, k2 = jax.random.split(key)
c = cfg()
if not os.path.isdir(pd_dir):
    t0 = time.time(); p, _ = kf.train_pd(c, jnp.asarray(lr), k1, progress=False)
    setup = kf.make_setup(c, channels=3, lr_shape=lr.shape[:2]); kf.save_pd(pd_dir, setup, p)
    print("phase1 s", time.time() - t0, flush=True)
from kfsr.methods import nonblind
bic = np.asarray(nonblind.initial_guess(jnp.asarray(lr), s))
res = {"bicubic": score(bic, k_true)}
ok = np.asarray(data_solve(jnp.asarray(lr), jnp.asarray(k_true), jnp.asarray(bic), scale=s, alpha=1e-3))
res["bicubic+dc_true"] = score(np.clip(ok,0,1), k_true)
VAR = {"t49": {"t_start": 49, "t_stride": 5}, "t49_ginit": {"t_start": 49, "t_stride": 5, "kernel.init": "gaussian"}, "ginit": {"kernel.init": "gaussian"}, "ginit_unet_only": {"kernel.init": "gaussian", "use_pd": False}, "base": {}, "unet_only": {"use_pd": False}, "one_pass": {"second_unet_pass": False}}
for v in variants:
    c = cfg(**VAR[v]); c.pd_checkpoint = pd_dir
    setup = kf.make_setup(c, channels=3, lr_shape=lr.shape[:2])
    t0 = time.time()
    x, k, h, _ = kf.sample(c, jnp.asarray(lr), kf.load_pd(pd_dir, setup), k2, progress=False)
    x, k = np.asarray(x), np.asarray(k)
    r = score(x, k); r["seconds"] = time.time() - t0
    r["kernel_error"] = float(metrics.aligned_kernel_error(k, k_true))
    res[v] = r
    for a in (1e-3, 1e-2, 1e-1):
        dc = np.clip(np.asarray(data_solve(jnp.asarray(lr), jnp.asarray(k), jnp.asarray(x), scale=s, alpha=a)), 0, 1)
        res[f"{v}+dc{a}"] = score(dc, k)
    np.save(f"{OUT}/{name}_{fam}_{v}_k.npy", k); io.save_image(f"{OUT}/{name}_{fam}_{v}.png", x)
    print(v, json.dumps(res, indent=0), flush=True)
json.dump(res, open(f"{OUT}/{name}_{fam}.json", "w"), indent=1)
print(json.dumps(res, indent=1))
