"""KernelFusion Phase-2 variants on one blind case, sharing one trained PD (Phase 1).

    python benchmarks/kf_phase2_variants.py bird l_shape base,unet_only,ginit
    python benchmarks/kf_phase2_variants.py bird l_shape 'lr=1e-4;kernel_lr=1e-3'
    (args: Set5 image, kfsr.data kernel family, comma-separated variants: names from VAR below or
    ';'-separated field=value overrides of the config, phase2 fields without the 'phase2.')

Set5 <image> centre crop 224, x4, the family's kernel (key 0) in DKP's convention, LR by DKP's
forward model (circular, stride) quantised to 8 bits; KernelFusion `cpu` preset with the same
forward model and kernel_center='dkp' (as kfsr.bench gives it). Prints PSNR-Y (shave 4),
LR-consistency PSNR and aligned kernel error per variant. Also scores bicubic and bicubic rolled
to the DKP geometry (the KernelFusion start). Appends to results/kf_variants/<image>_<family>.json
(+ the PD, SR images, kernels).
"""
import json, os, sys, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import jax, jax.numpy as jnp, numpy as np  # noqa: E402
from configs import kernelfusion as kc  # noqa: E402
from kfsr import io, metrics  # noqa: E402
from kfsr.data import center_crop, make_kernel  # noqa: E402
from kfsr.degrade import degrade, Degradation, kernels  # noqa: E402
from kfsr.methods import kernelfusion as kf  # noqa: E402
from kfsr.presets import apply_override  # noqa: E402

OUT = "results/kf_variants"
VAR = {"base": {}, "unet_only": {"use_pd": False}, "one_pass": {"second_unet_pass": False},
       "ginit": {"kernel.init": "gaussian"}, "aligned": {"kernel_center": "aligned"}}


def main():
    os.makedirs(OUT, exist_ok=True)
    name = sys.argv[1] if len(sys.argv) > 1 else "bird"
    fam = sys.argv[2] if len(sys.argv) > 2 else "l_shape"
    variants = sys.argv[3].split(",") if len(sys.argv) > 3 else ["base", "unet_only"]
    s = 4
    hr = center_crop(io.load_image(f"/work/shared/data/Set5/HR/{name}.png"), 224)
    k_true = make_kernel(fam, jax.random.key(0), s, kernels.dkp_kernel_size(s))
    spec = Degradation.dkp(s)
    lr = np.round(np.clip(np.asarray(degrade(hr, k_true, spec)), 0, 1) * 255) / 255

    def cfg(over):
        c = kc.get_config("cpu")
        c.scale, c.padding, c.offset, c.kernel_center = s, "circular", 0, "dkp"
        for k, v in over.items():
            apply_override(c, k if "." in k or k in c else "phase2." + k,
                           str(v).lower() if isinstance(v, bool) else str(v))
        return c

    def score(x, k):
        return {"psnr_y": float(metrics.psnr_y(x, hr, s)),
                "lr_psnr": float(metrics.lr_consistency_psnr(x, k, lr, spec))}

    pd_dir = os.path.abspath(f"{OUT}/pd_{name}_{fam}")
    k1, k2 = jax.random.split(jax.random.key(0))
    if not os.path.isdir(pd_dir):
        c = cfg({})
        t0 = time.time()
        p, _ = kf.train_pd(c, jnp.asarray(lr), k1, progress=False)
        kf.save_pd(pd_dir, kf.make_setup(c, channels=3, lr_shape=lr.shape[:2]), p)
        print("phase1 s", round(time.time() - t0), flush=True)
    path = f"{OUT}/{name}_{fam}.json"
    res = json.load(open(path)) if os.path.isfile(path) else {}
    for row, shift in (("bicubic", 0), ("bicubic_rolled", kf.make_setup(cfg({})).start_shift)):
        res[row] = score(np.asarray(kf._to_01(kf.bicubic_start(jnp.asarray(lr), s, shift)[0])), k_true)
    for v in variants:
        over = VAR[v] if v in VAR else dict(x.split("=", 1) for x in v.split(";") if x)
        c = cfg(over)
        c.pd_checkpoint = pd_dir
        setup = kf.make_setup(c, channels=3, lr_shape=lr.shape[:2])
        t0 = time.time()
        x, k, h, _ = kf.sample(c, jnp.asarray(lr), kf.load_pd(pd_dir, setup), k2, progress=False)
        x, k = np.asarray(x), np.asarray(k)
        r = score(x, k)
        r["seconds"] = round(time.time() - t0, 1)
        r["kernel_error"] = float(metrics.aligned_kernel_error(k, k_true))
        res[v] = r
        tag = v.replace(";", "_").replace("=", "")
        np.save(f"{OUT}/{name}_{fam}_{tag}_k.npy", k)
        io.save_image(f"{OUT}/{name}_{fam}_{tag}.png", x)
        print(v, json.dumps(r), flush=True)
        json.dump(res, open(path, "w"), indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
