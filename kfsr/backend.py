"""XLA/CPU settings, set in one place before jax initialises its backend (kfsr/__init__ calls
`configure()` first thing).

`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` takes convolutions away from
YNNPACK (jax 0.10.2's default routes them there) and gives them back to Eigen, while keeping
YNNPACK for dots. Measured with benchmarks/dip_step_speed.py (official DIP-DKP skip net, 128 ch,
256x256, forward+backward+Adam, jax 0.10.2, 2-core AMD EPYC with AVX2, quiet machine, medians of
6-10 interleaved steps, ms/step):

    jax default flags                                   4956
    ynn off for everything (`...ynn_fusion_type=`)      2392
    ynn off for convolutions only (this flag)           2365
    PyTorch 2.13 eager NCHW / channels-last             2626 / 3510

Single convolution 3x3 128->128 on 128x128, one core: YNN 318 ms, Eigen 115 ms; a 1024^3 dot:
YNN 56 ms, Eigen 72 ms. Tried without a measurable effect on the DIP step (within 2 %):
`--xla_cpu_use_onednn=true` (+ onednn_custom_call / onednn_fusion_type=individual_convolution),
`--xla_cpu_experimental_xnn_fusion_type=dot|eltwise,reduce|individual_convolution`,
`--xla_cpu_prefer_vector_width=512`, `--xla_cpu_enable_concurrency_optimized_scheduler=false`,
`--xla_cpu_multi_thread_eigen=false` (no gain). `--xla_cpu_use_thunk_runtime` no longer exists
in this jax. Float32 throughout (no bf16). Re-measure when jax changes.

Flags already in the user's XLA_FLAGS always win; KFSR_XLA_DEFAULTS=0 adds nothing. XLA aborts
on flags it does not know, so they are only added for the jaxlib versions they were measured on.
"""
import os
import sys
from importlib import metadata

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
JAXLIB_TESTED = ("0.10.",)  # version prefixes the flags exist in (and were measured on)


def _jaxlib_version() -> str:
    try:
        return metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return ""


def configure_compile_cache() -> None:
    """A persistent XLA compilation cache in ~/.cache/kfsr/xla (or $KFSR_CACHE_DIR/xla): the
    DIP-DKP step takes 1-3 minutes to compile on 2 CPU cores, so the second run on an image of
    the same size should not pay it again. A JAX_COMPILATION_CACHE_DIR set by the user wins;
    KFSR_COMPILE_CACHE=0 turns it off."""
    if os.environ.get("KFSR_COMPILE_CACHE", "1") == "0" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    root = os.environ.get("KFSR_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "kfsr")
    path = os.path.join(root, "xla")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return  # read-only home: run without a cache
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "5")
    if "jax" in sys.modules:  # jax read its env already: set the options directly
        import jax

        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def configure() -> None:
    """Set up the persistent compile cache and append kfsr's XLA CPU flags to XLA_FLAGS unless
    the user already set the same flag."""
    configure_compile_cache()
    if os.environ.get("KFSR_XLA_DEFAULTS", "1") == "0":
        return
    if not _jaxlib_version().startswith(JAXLIB_TESTED):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    present = {f.split("=")[0] for f in flags.split()}
    for flag in CPU_FLAGS:
        if flag.split("=")[0] not in present:
            flags = (flags + " " + flag).strip()
    os.environ["XLA_FLAGS"] = flags
