"""PyTorch reference of the DIP-DKP skip network and one DIP training step, for speed and parity checks.

A re-statement of the official DIP-DKP/FKP `skip` net (see kfsr/nets/dip.py and
shared/reference/methods/dkp.md §3.2), written as one recursive module so its parameters map 1:1 onto
kfsr's Flax `SkipNet` (`load_flax_params`).

Standalone:
    python benchmarks/torch_dip_reference.py --size 256 --channels 128 [--steps 10] [--threads 2]
prints ms/step (median) of forward + MSE + backward + Adam(lr 5e-3) for NCHW and channels-last.
Importable: `time_torch_step(...)` returns the timings; `benchmarks/dip_step_speed.py` runs it beside
kfsr's jitted step in the same process.

Needs `pip install torch==2.13.0` (CPU build); not a kfsr dependency.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class BN(nn.BatchNorm2d):
    """BatchNorm2d always in train mode (batch statistics), as DIP uses it."""

    def __init__(self, c):
        super().__init__(c, track_running_stats=False)


def conv(cin, cout, k, stride=1, pad="reflect"):
    p = (k - 1) // 2
    if pad == "reflect" and p > 0:
        return nn.Sequential(nn.ReflectionPad2d(p), nn.Conv2d(cin, cout, k, stride, 0))
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, p if pad == "zero" else 0))


class NonLocal(nn.Module):
    def __init__(self, c, ci=None):
        super().__init__()
        ci = ci or max(c // 2, 1)
        self.ci = ci
        self.g = nn.Conv2d(c, ci, 1)
        self.theta = nn.Conv2d(c, ci, 1)
        self.phi = nn.Conv2d(c, ci, 1)
        self.W_conv = nn.Conv2d(ci, c, 1)
        self.W_bn = BN(c)
        nn.init.constant_(self.W_bn.weight, 0)
        nn.init.constant_(self.W_bn.bias, 0)

    def forward(self, x):
        b, c, h, w = x.shape
        g = F.max_pool2d(self.g(x), 2).reshape(b, self.ci, -1).permute(0, 2, 1)
        th = self.theta(x).reshape(b, self.ci, -1).permute(0, 2, 1)
        ph = F.max_pool2d(self.phi(x), 2).reshape(b, self.ci, -1)
        f = torch.matmul(th, ph)
        f = f / f.size(-1)
        y = torch.matmul(f, g).permute(0, 2, 1).contiguous().reshape(b, self.ci, h, w)
        return self.W_bn(self.W_conv(y)) + x


class Scale(nn.Module):
    def __init__(self, i, cin, n=5, down=128, up=128, skip=16, nonlocal_from=2, pad="reflect",
                 upsample="bilinear"):
        super().__init__()
        self.skip_conv = conv(cin, skip, 1, pad=pad)
        self.skip_bn = BN(skip)
        self.down_conv = conv(cin, down, 3, 2, pad=pad)
        self.down_bn = BN(down)
        self.nonlocal_ = NonLocal(down) if (nonlocal_from is not None and i >= nonlocal_from) else None
        self.down_conv2 = conv(down, down, 3, pad=pad)
        self.down_bn2 = BN(down)
        self.deeper = (Scale(i + 1, down, n, down, up, skip, nonlocal_from, pad, upsample)
                       if i < n - 1 else None)
        k = up if i < n - 1 else down
        self.up = nn.Upsample(scale_factor=2, mode=upsample)
        self.cat_bn = BN(skip + k)
        self.up_conv = conv(skip + k, up, 3, pad=pad)
        self.up_bn = BN(up)
        self.up_conv1x1 = conv(up, up, 1, pad=pad)
        self.up_bn1x1 = BN(up)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x):
        s = self.act(self.skip_bn(self.skip_conv(x)))
        d = self.act(self.down_bn(self.down_conv(x)))
        if self.nonlocal_ is not None:
            d = self.nonlocal_(d)
        d = self.act(self.down_bn2(self.down_conv2(d)))
        if self.deeper is not None:
            d = self.deeper(d)
        d = self.up(d)
        th, tw = min(s.shape[2], d.shape[2]), min(s.shape[3], d.shape[3])
        if s.shape[2:] != d.shape[2:]:
            crop = lambda t: t[:, :, (t.shape[2] - th) // 2:(t.shape[2] - th) // 2 + th,
                               (t.shape[3] - tw) // 2:(t.shape[3] - tw) // 2 + tw]
            s, d = crop(s), crop(d)
        y = self.cat_bn(torch.cat([s, d], 1))
        y = self.act(self.up_bn(self.up_conv(y)))
        return self.act(self.up_bn1x1(self.up_conv1x1(y)))


class SkipNetTorch(nn.Module):
    def __init__(self, cin=3, cout=3, n=5, down=128, up=128, skip=16, nonlocal_from=2,
                 pad="reflect", upsample="bilinear"):
        super().__init__()
        self.body = Scale(0, cin, n, down, up, skip, nonlocal_from, pad, upsample)
        self.head = nn.Conv2d(up, cout, 1)

    def forward(self, z):
        return torch.sigmoid(self.head(self.body(z)))


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def load_flax_params(model: SkipNetTorch, params) -> None:
    """Copy kfsr `SkipNet` params (Flax pytree, HWIO kernels) into the torch model (official config names)."""
    p = params["params"] if "params" in params else params

    def set_conv(mod, d):
        c = mod[-1] if isinstance(mod, nn.Sequential) else mod
        c.weight.data = torch.from_numpy(np.asarray(d["kernel"]).transpose(3, 2, 0, 1).copy())
        c.bias.data = torch.from_numpy(np.asarray(d["bias"]).copy())

    def set_bn(mod, d):
        mod.weight.data = torch.from_numpy(np.asarray(d["scale"]).copy())
        mod.bias.data = torch.from_numpy(np.asarray(d["bias"]).copy())

    scale, i = model.body, 0
    while scale is not None:
        for name in ("skip_conv", "down_conv", "down_conv2", "up_conv", "up_conv1x1"):
            set_conv(getattr(scale, name), p[f"s{i}_{name}"])
        for name in ("skip_bn", "down_bn", "down_bn2", "cat_bn", "up_bn", "up_bn1x1"):
            set_bn(getattr(scale, name), p[f"s{i}_{name}"])
        if scale.nonlocal_ is not None:
            q = p[f"s{i}_nonlocal"]
            for name in ("g", "theta", "phi", "W_conv"):
                set_conv(getattr(scale.nonlocal_, name), q[name])
            set_bn(scale.nonlocal_.W_bn, q["W_bn"])
        scale, i = scale.deeper, i + 1
    set_conv(model.head, p["head"])


def make_torch_step(size=256, channels=128, threads=2, channels_last=False, skip=16, seed=0):
    """Build the model, data and Adam optimiser; return (step, n_params). `step()` runs one training step."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = SkipNetTorch(down=channels, up=channels, skip=skip)
    z = torch.rand(1, 3, size, size) * 0.1
    target = torch.rand(1, 3, size, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        z = z.contiguous(memory_format=torch.channels_last)
        target = target.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(z), target)
        loss.backward()
        opt.step()
        return loss.item()

    return step, num_params(model)


def time_torch_step(size=256, channels=128, steps=10, warmup=2, threads=2, channels_last=False,
                    skip=16, seed=0, verbose=False):
    """Median ms of one DIP training step (forward, MSE vs a target, backward, Adam lr 5e-3).

    Returns dict(ms=median, all=[...], params=count).
    """
    step, n = make_torch_step(size, channels, threads, channels_last, skip, seed)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
        if verbose:
            print(f"  torch {'NHWC' if channels_last else 'NCHW'} step {times[-1]:.0f} ms", flush=True)
    return dict(ms=statistics.median(times), all=times, params=n)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {a.threads} threads, {a.size}x{a.size}, {a.channels} ch")
    for cl in (False, True):
        r = time_torch_step(a.size, a.channels, a.steps, a.warmup, a.threads, channels_last=cl)
        print(f"{'channels-last' if cl else 'NCHW':14s} params {r['params']:,}  median {r['ms']:.0f} ms/step "
              f"(min {min(r['all']):.0f}, max {max(r['all']):.0f}, n={len(r['all'])})")


if __name__ == "__main__":
    main()
