"""Helper for tests/test_loop.py: a tiny deterministic training run driven by kfsr.train.loop.run.

Also imported by the tests for `init_state` / `mlp_step` (so both sides run the same step).

    python tests/_loop_child.py OUT_NPZ [--ckpt DIR] [--marker FILE] [--steps N] [--chunk C]
                                [--sleep S] [--loop python|scan]

Runs SGD on a small MLP with fresh random data every step (the PRNG key lives in the state),
appends "STEP LEN_HISTORY" to MARKER after each chunk (after that chunk's checkpoint save was
issued), sleeps S seconds per chunk, and finally writes every state leaf (keys as key data) and
the history to OUT_NPZ.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kfsr  # noqa: E402,F401  (XLA flags before jax initialises)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def init_state(seed=0, din=4, hidden=8):
    kw, kstate = jax.random.split(jax.random.key(seed))
    w = jax.random.normal(kw, (din + 1, hidden)) * 0.5  # one random call: fewer tiny compiles
    return {
        "params": {
            "w1": w[:din],
            "b1": jnp.zeros((hidden,)),
            "w2": w[din:].T,
            "b2": jnp.zeros((1,)),
        },
        "key": kstate,
    }


def _loss(params, x, y):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)


def mlp_step(state, lr=0.1):
    key, sub = jax.random.split(state["key"])
    x = jax.random.normal(sub, (16, state["params"]["w1"].shape[0]))
    y = jnp.sin(x).sum(axis=1, keepdims=True)
    loss, g = jax.value_and_grad(_loss)(state["params"], x, y)
    params = jax.tree.map(lambda p, gp: p - lr * gp, state["params"], g)
    return {"params": params, "key": key}, {"loss": loss, "gnorm": _global_norm(g)}


def _global_norm(tree):
    return jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree.leaves(tree)))


def flat(state):
    """{path: numpy array} with typed keys as key data (for exact comparisons)."""
    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        out[jax.tree_util.keystr(path)] = np.asarray(x)
    return out


def main():
    from kfsr.train.loop import run

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--marker", default=None)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--chunk", type=int, default=5)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--loop", default="python")
    a = ap.parse_args()

    def on_chunk(step, state, history):
        if a.marker:
            with open(a.marker, "a") as f:
                f.write(f"{step} {len(history)}\n")
                f.flush()
                os.fsync(f.fileno())
        time.sleep(a.sleep)

    state, history = run(mlp_step, init_state(), a.steps, chunk=a.chunk, checkpoint_dir=a.ckpt,
                         loop=a.loop, progress=False, on_chunk=on_chunk)
    tmp = a.out + ".tmp.npz"
    np.savez(tmp, history=np.array(json.dumps(history)), **flat(state))
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
