"""Speed of one DIP training step: kfsr (jax.jit, forward+backward+optax Adam, donated buffers) vs PyTorch.

Runs kfsr's step and the PyTorch reference (benchmarks/torch_dip_reference.py) in the SAME process,
interleaved round by round (one step of each per round), so that load from other processes hits all
of them alike, and prints medians and ratios:

    python benchmarks/dip_step_speed.py --size 256 --channels 128 --steps 10
    python benchmarks/dip_step_speed.py --xla-flags ""            # no kfsr flags (jax defaults)
    python benchmarks/dip_step_speed.py --xla-flags="--xla_cpu_use_onednn=true" --no-torch
    python benchmarks/dip_step_speed.py --net nonlocal_reassociate=False
    python benchmarks/dip_step_speed.py --sweep                    # one subprocess per flag set
    python benchmarks/dip_step_speed.py --min-quiet 10 --max-minutes 60   # wait for a quiet machine

`--xla-flags` replaces kfsr's defaults (kfsr/backend.py) for this run; without it the defaults apply.
Each step is tagged with the CPU other processes used meanwhile (/proc/stat); on a shared machine
only the "quiet" rounds are representative: OpenMP-threaded torch slows down far more than XLA when
another process holds a core (seen: 3.5 s -> 13 s per step for torch, 2.4 s -> 4.9 s for kfsr).
`--net conv_vjp=autodiff --net bn_stats=reduce` gives the plain-autodiff network for comparison.
"""
from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# flag sets tried by --sweep (each in its own process: XLA_FLAGS are read once at backend start)
SWEEP = {
    "jax defaults": "",
    "kfsr default (ynn convs off)": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "ynn off": "--xla_cpu_experimental_ynn_fusion_type=",
    "ynn conv only": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution",
    "ynn off, xnn off": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_xnnpack=false",
    "ynn off, onednn": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_onednn=true",
    "ynn off, no eigen mt": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_multi_thread_eigen=false",
}


_CLK = os.sysconf("SC_CLK_TCK")


def _cpu_sample():
    """(machine busy jiffies, this process's jiffies, wall time)."""
    with open("/proc/stat") as f:
        v = [int(a) for a in f.readline().split()[1:]]
    with open("/proc/self/stat") as f:
        st = f.read().rsplit(")", 1)[1].split()
    return sum(v) - v[3] - v[4], int(st[11]) + int(st[12]), time.perf_counter()


def _foreign_cores(a, b):
    """Average number of cores other processes used between two samples (machine-load monitor)."""
    return max(((b[0] - a[0]) - (b[1] - a[1])) / _CLK / max(b[2] - a[2], 1e-9), 0.0)


def _parse_net(items):
    out = {}
    for it in items or ():
        k, v = it.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def make_kfsr_step(size=256, channels=128, skip=16, seed=0, **net_kw):
    """Build params, Adam state and a jitted donated step. Returns (run_one, n_params).

    `run_one()` does one step and blocks until it is finished.
    """
    import jax
    import jax.numpy as jnp
    import optax

    from kfsr.nets.dip import SkipNet, dip_input, num_params

    net = SkipNet(channels_down=channels, channels_up=channels, channels_skip=skip, **net_kw)
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    z = dip_input(k1, (1, size, size, 3))
    target = jax.random.uniform(k2, (1, size, size, 3))
    params = net.init(k3, z)
    tx = optax.adam(5e-3)
    state = [params, tx.init(params)]

    def step_fn(p, o, z, target):
        def lf(p):
            return jnp.mean(jnp.square(net.apply(p, z) - target))
        loss, g = jax.value_and_grad(lf)(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    jstep = jax.jit(step_fn, donate_argnums=(0, 1))

    def run_one():
        p, o, loss = jstep(state[0], state[1], z, target)
        loss.block_until_ready()
        jax.block_until_ready(p)
        state[0], state[1] = p, o
        return float(loss)

    return run_one, num_params(params)


def run(size=256, channels=128, steps=10, warmup=2, threads=2, torch_=True, net_kw=None,
        verbose=True, min_quiet=0, quiet=0.15, max_minutes=30.0):
    """Interleaved timing: each round runs one step of every runner.

    A round is "quiet" when other processes used < `quiet` cores during each of its steps. Runs at
    least `steps` rounds and, with `min_quiet` > 0, goes on until `min_quiet` quiet rounds are
    collected or `max_minutes` pass. Returns dict name -> dict(ms, all, params, foreign, quiet_ms,
    n_quiet) plus "_meta".
    """
    import jax

    runners = {}
    t0 = time.perf_counter()
    f, n = make_kfsr_step(size, channels, **(net_kw or {}))
    f()  # compile + first run
    compile_s = time.perf_counter() - t0
    runners["kfsr"] = (f, n)
    if torch_:
        sys.path.insert(0, HERE)
        from torch_dip_reference import make_torch_step
        runners["torch NCHW"] = make_torch_step(size, channels, threads, channels_last=False)
        runners["torch channels-last"] = make_torch_step(size, channels, threads, channels_last=True)
    for name, (f, _) in runners.items():
        for _ in range(warmup if name != "kfsr" else max(warmup - 1, 0)):
            f()
    times = {name: [] for name in runners}
    foreign = {name: [] for name in runners}
    quiet_rounds = []
    start = time.perf_counter()
    r = 0
    while True:
        enough = r >= steps and len(quiet_rounds) >= min_quiet
        if enough or (r >= steps and time.perf_counter() - start > 60 * max_minutes):
            break
        for name, (f, _) in runners.items():
            a = _cpu_sample()
            t = time.perf_counter()
            f()
            times[name].append((time.perf_counter() - t) * 1e3)
            foreign[name].append(_foreign_cores(a, _cpu_sample()))
        if all(foreign[k][-1] < quiet for k in runners):
            quiet_rounds.append(r)
        if verbose:
            print(f"  round {r}{' (quiet)' if quiet_rounds and quiet_rounds[-1] == r else ''}: "
                  + ", ".join(f"{k} {v[-1]:.0f} ms (others {foreign[k][-1]:.2f} cores)"
                              for k, v in times.items()), flush=True)
        r += 1
    res = {}
    for name in runners:
        q = [times[name][i] for i in quiet_rounds]
        res[name] = dict(ms=statistics.median(times[name]), all=times[name], params=runners[name][1],
                         foreign=statistics.median(foreign[name]),
                         quiet_ms=statistics.median(q) if q else None, n_quiet=len(q))
    res["_meta"] = dict(compile_s=compile_s, xla_flags=os.environ.get("XLA_FLAGS", ""),
                        jax=jax.__version__, load=os.getloadavg(), rounds=r)
    return res


def print_table(res, title=""):
    meta = res["_meta"]
    print(f"\n{title}XLA_FLAGS={meta['xla_flags']!r}  jax {meta['jax']}  kfsr first call (compile+run) "
          f"{meta['compile_s']:.1f} s  load {meta['load'][0]:.1f}")
    rows = {k: v for k, v in res.items() if k != "_meta"}
    counts = {k: v["params"] for k, v in rows.items()}
    print("params: " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
          + ("  (agree)" if len(set(counts.values())) == 1 else "  (DIFFER!)"))
    nq = next(iter(rows.values()))["n_quiet"]
    print(f"{'':22s}{'median ms':>10s}{'min':>8s}{'max':>8s}{'others(cores)':>15s}"
          f"{'quiet median':>14s}  ({nq} of {meta['rounds']} rounds quiet)")
    for k, v in rows.items():
        qm = f"{v['quiet_ms']:14.0f}" if v["quiet_ms"] is not None else f"{'-':>14s}"
        print(f"{k:22s}{v['ms']:10.0f}{min(v['all']):8.0f}{max(v['all']):8.0f}{v['foreign']:15.2f}{qm}")
    if "torch NCHW" in rows:
        for label, key in (("all rounds", "ms"), ("quiet rounds", "quiet_ms")):
            kf, tn, tc = (rows[k][key] for k in ("kfsr", "torch NCHW", "torch channels-last"))
            if kf is not None:
                print(f"ratio ({label}): kfsr/torch NCHW {kf / tn:.2f}   kfsr/torch channels-last {kf / tc:.2f}")
    busy = max(v["foreign"] for v in rows.values())
    if busy > 0.15:
        print(f"WARNING: other processes used ~{busy:.1f} cores (median) during the timing: all-round "
              "numbers are not representative (OpenMP-based torch suffers most); trust quiet rounds.")


def sweep(args):
    rows = []
    for name, flags in SWEEP.items():
        cmd = [sys.executable, os.path.abspath(__file__), "--size", str(args.size), "--channels",
               str(args.channels), "--steps", str(args.steps), f"--xla-flags={flags}", "--quiet"]
        if args.no_torch:
            cmd.append("--no-torch")
        cmd += ["--min-quiet", str(args.min_quiet), "--max-minutes", str(args.max_minutes)]
        for it in args.net or ():
            cmd += ["--net", it]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        print(f"### {name}\n{out.stdout}{out.stderr[-2000:] if out.returncode else ''}", flush=True)
        rows.append((name, out.stdout))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--xla-flags", default=None, help="replace kfsr's default XLA_FLAGS for this run")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--net", action="append", help="SkipNet field override, e.g. nonlocal_reassociate=False")
    ap.add_argument("--sweep", action="store_true", help="run every flag set of SWEEP in a subprocess")
    ap.add_argument("--min-quiet", type=int, default=0,
                    help="keep going until this many rounds ran with other processes idle")
    ap.add_argument("--max-minutes", type=float, default=30.0)
    ap.add_argument("--quiet", action="store_true", help="no per-round output")
    args = ap.parse_args()
    if args.sweep:
        sweep(args)
        return
    if args.xla_flags is not None:
        os.environ["XLA_FLAGS"] = args.xla_flags
        os.environ["KFSR_XLA_DEFAULTS"] = "0"
    sys.path.insert(0, ROOT)
    import kfsr  # noqa: F401  (applies kfsr.backend.configure() unless disabled above)
    res = run(args.size, args.channels, args.steps, args.warmup, args.threads, not args.no_torch,
              _parse_net(args.net), verbose=not args.quiet, min_quiet=args.min_quiet,
              max_minutes=args.max_minutes)
    print_table(res, f"{args.size}x{args.size}, {args.channels} ch, {args.steps} interleaved rounds. ")


if __name__ == "__main__":
    main()
