"""XLA/CPU settings, set in one place before jax initialises its backend.

DESIGN.md §6: `--xla_cpu_experimental_ynn_fusion_type=` lets convolutions use both cores on XLA:CPU
(DIP step 64ch 481 -> 322 ms). Re-measure when jax changes (benchmarks/dip_step_speed.py).
Set KFSR_XLA_DEFAULTS=0 to add nothing; flags already in the user's XLA_FLAGS always win.
"""
import os

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)


def configure() -> None:
    """Append kfsr's XLA CPU flags to XLA_FLAGS unless the user already set them."""
    if os.environ.get("KFSR_XLA_DEFAULTS", "1") == "0":
        return
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in CPU_FLAGS:
        name = flag.split("=")[0]
        if name not in flags:
            flags = (flags + " " + flag).strip()
    os.environ["XLA_FLAGS"] = flags
