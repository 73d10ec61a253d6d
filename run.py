"""kfsr command line: blind (or non-blind) super-resolution of one image or a folder.

    python run.py --config=configs/dkp.py                      # bundled sample, x4, DIP-DKP (cpu)
    python run.py --config=configs/dkp.py:paper --input=photo.png --output=out/
    python run.py --config=configs/nonblind.py --input=lr.png --kernel=k.npy --scale=4
    python run.py --config=configs/dkp.py --config.schedule.outer_iters=50 --dry-run

Each image gets an output folder with hr.png, kernel.npy, kernel.png, metrics.json and
config.json; a folder input also gets summary.json and summary.md. Bad flags, files or config
values stop with a one-line error (exit code 2).
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import kfsr  # noqa: F401  (sets XLA CPU flags before jax initialises)
from kfsr.errors import KfsrInputError, NonFiniteError

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/dkp.py", "Method config file, optionally with a preset: configs/dkp.py:paper. "
    "Override any field with --config.<field>=value.", lock_config=True)
_INPUT = flags.DEFINE_string("input", None, "LR image or folder of LR images (default: the "
                             "bundled sample kfsr/assets/chelsea_lr64.png).")
_KERNEL = flags.DEFINE_string("kernel", None, "Known kernel (.npy/.mat/.png) for non-blind SR.")
_GT = flags.DEFINE_string("gt", None, "Ground-truth HR image (or folder, same file names) for "
                          "PSNR/SSIM.")
_GT_KERNEL = flags.DEFINE_string("gt_kernel", None, "Ground-truth kernel (or folder of <stem>.npy "
                                 "/.mat) for kernel metrics.")
_SCALE = flags.DEFINE_integer("scale", None, "Scale factor (overrides config.scale).")
_SEED = flags.DEFINE_integer("seed", None, "Random seed (overrides config.seed).")
_OUTPUT = flags.DEFINE_string("output", "outputs", "Output folder; one sub-folder per image.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the resolved config and exit.")
_BATCH = flags.DEFINE_string("batch", "auto", "Folder input: optimise up to this many same-size "
                             "images together (vmapped, sharded over devices); 'auto' = 1 on CPU "
                             "(measured faster one by one), 8 on GPU/TPU.")
_RESUME = flags.DEFINE_bool("resume", True, "Resume from checkpoints in the output folder.")
_KEEP = flags.DEFINE_bool("keep_checkpoints", False, "Keep an image's training checkpoints after "
                          "its outputs are written (default: delete them; a KernelFusion run's "
                          "trained patch denoiser is always kept in <output>/pd).")

DEFAULT_INPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kfsr", "assets",
                             "chelsea_lr64.png")


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # hide jax's backend probing chatter
    from kfsr import cli  # imported after flag parsing: jax initialises here

    try:
        config = _CONFIG.value
        config.to_dict()  # a file that failed to load only raises when used
    except OSError as e:  # config file missing or failing to import
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        _fail(f"--config: {lines[-1]}")
    try:
        config = cli.resolve_config(config, scale=_SCALE.value, seed=_SEED.value)
        if _DRY_RUN.value:
            print(config)
            return
        cli.run(config, input_path=_INPUT.value or DEFAULT_INPUT, output=_OUTPUT.value,
                kernel_path=_KERNEL.value, gt=_GT.value, gt_kernel=_GT_KERNEL.value,
                resume=_RESUME.value, batch=_BATCH.value, keep_checkpoints=_KEEP.value)
    except (KfsrInputError, NonFiniteError) as e:
        logging.debug("full error", exc_info=True)
        _fail(str(e).strip().splitlines()[0])


def _parse(argv):
    """absl flag parsing, with one-line errors for bad flags, presets and config fields."""
    argv = ["--dry_run" if a == "--dry-run" else a for a in argv]
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        _fail(lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}")
    except (AttributeError, KeyError, ValueError, TypeError) as e:
        # ml_collections reports an unknown --config.<field> as AttributeError/KeyError.
        bad = [a for a in argv[1:] if a.startswith("--config")]
        field = str(e).strip().strip("\"'").splitlines()[0] if str(e).strip() else "?"
        _fail(f"bad config flag ({' '.join(bad)}): the config has no field {field!r}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
