"""SSR (Lin et al., ECCV 2024, arXiv 2403.05808): "Adaptive Multi-modal Fusion of Spatially Variant
Kernel Refinement with Diffusion Model for Blind Image Super-Resolution". No official code; the
paper's equations are stripped from the available text. Sources: report = shared/reference/
methods/blinddiff_ssr.md §2 (reconstruction), paper = papers/001_ssr.txt. Tags: [P] paper prose,
[R] the report's reconstruction, [M] MANet's official code (report §3), [I] our choice.

    # 1. train the three parts (each resumes when run again with the same workdir)
    python -m kfsr.train.supervised --config=configs/ssr.py:cpu --config.part=dkenet \
        --workdir=runs/ssr_dkenet
    python -m kfsr.train.supervised --config=configs/ssr.py:cpu --config.part=rrdb \
        --workdir=runs/ssr_rrdb
    python -m kfsr.train.supervised --config=configs/ssr.py:cpu --config.part=denoiser \
        --workdir=runs/ssr_denoiser
    # 2. SR (SVKR, then the AMF-conditioned reverse diffusion)
    python run.py --config=configs/ssr.py:cpu --input=lr.png \
        --config.checkpoints.dkenet=runs/ssr_dkenet --config.checkpoints.rrdb=runs/ssr_rrdb \
        --config.checkpoints.denoiser=runs/ssr_denoiser
    # without depth (the benchmark's ablation): --config.use_depth=False (train it too: the
    #   DKENet and the denoiser then have no depth branch / encoder)
    # oracle: pass the true kernel or field (kfsr.methods.ssr.run(..., kernel=field))
    # 3. benchmark: Set14 c224 x4 with synthetic depth and SSR's depth-dependent SV fields
    #    (kfsr.data 'depth_field'), rows bicubic, DIP-DKP, SSR with / without depth, oracle field
    python -m kfsr.bench --dataset set14 --kernels depth_field --preset cpu \
        --methods bicubic,dkp,ssr,ssr_nodepth,ssr_oracle \
        --ssr-ckpt dkenet=runs/ssr_dkenet,rrdb=runs/ssr_rrdb,denoiser=runs/ssr_denoiser \
        --ssr-nodepth-ckpt dkenet=runs/ssr_nd_dkenet,rrdb=runs/ssr_rrdb,denoiser=runs/ssr_nd_denoiser \
        --out results/bench_ssr --update-docs

Presets
  paper  structure only, full sizes: DKENet nf 128 (3,059,705 params; MANet's estimator
         1,810,361 without depth), RRDB-SFT nb 10 (8,086,256), a pixel-space AMF-conditioned
         UNet with SD-2 widths and no attention: 812,296,835 params (UNet 620,750,723, LR
         half-UNet 189,911,680, kernel / depth encoders 119,488 / 111,424, five AMFs
         1,403,520; by jax.eval_shape in tests/test_ssr.py). Not trained here: needs DF2K and
         GPUs.
  cpu    (default) x4, K 21, tiny networks for 2 CPU cores on BSD100 crops, each part trained
         for 30 minutes (--config.train.max_minutes=30; docs/BENCHMARKS.md has the losses).
         The reverse diffusion starts from SVKR's image noised to t = 20 (diffusion.t_start),
         not from noise: a denoiser trained for 30 CPU minutes (600 steps) cannot draw an image
         from noise (PSNR-Y 17.2 on the Set14 SV set vs bicubic 24.9), and the refinement costs
         less the smaller t is (Set5 SV validation set, PSNR-Y of SSR vs SVKR's 28.98: t = 20
         28.08, t = 60 27.14). The paper's start is diffusion.t_start = None.
         Such a sampler only queries the denoiser at t <= t_start, so the benchmark's denoisers
         were fine-tuned there: resumed from the 600-step one to 1,000 steps (31 min) with
         --config.diffusion.train_t_max=50 --config.train.max_minutes=25 (a copy of the
         workdir). Set5 SV: PSNR-Y 28.55 against 28.08 before (SVKR 28.98).
         The benchmark's RRDB and both DKENets were then fine-tuned from their exported
         models in new workdirs (--config.train.init_from=runs/ssr_cpu_P, a new lr schedule;
         DKENets on crop 128): Set5 SV with depth 28.90, without depth 28.78; Set14 SV 25.89
         and 25.80 against DIP-DKP's 25.69 (docs/BENCHMARKS.md has every command).
  test   x2, K 11, very tiny, for tests/test_ssr.py.

Unspecified choices (report §2.8) and how this config decides each:
  kernel size / scale: 21 at x4 [M] (cpu), 11 at x2 (test).
  forward model: MANet's gather SV blur + direct (stride) subsampling [M]; padding 'reflect'
    (MANet replicates; kfsr's SV blur has no replicate mode) [I].
  Eq. 2 (target and form): the kernel field, svkr.rule 'ema' K_i = b K_{i-1} + (1-b) K^_i
    (the report's default; 'momentum' = heavy ball); N = 3, beta = 0.9 [P].
  initial SR I_0: MATLAB-bicubic upscaling [R] (svkr.init).
  depth (M): MiDaS v3.1 in the paper [P]; no weights offline -> a kfsr.depth provider
    (depth.source: 'sharpness' defocus proxy on the latest SR by default; 'user' map,
    'synthetic', 'constant', 'position'); min-max normalised on the LR grid [I].
  DKENet loss / data: per-pixel kernel L1 (MANet stage 1 up to its 1e4 scale) on synthetic
    depth-dependent SV Gaussian fields (data.kernel.family 'depth_field') [R, I].
  RRDB (R): MANet stage 2's RRDB-SFT on uncentred PCA codes of the TRUE field, L1 [R, M];
    PCA fitted to pca.samples kernels of the training family (MANet: 150k, 15 components).
  diffusion backbone: pixel space, no VAE, no pretrained SD, no attention (no weights offline,
    CPU-trainable) [I]; LR half-UNet (IB, MB) + FTB injection, depth / kernel encoders smaller
    [P, R]; AMF with per-pixel MLPs (hidden 128 [P]) and normalisation 'batch' (paper's BN,
    batch statistics) or 'group' [R]; injection 'add' [R].
  Eq. 5 feature constraints: unspecified -> not implemented (lambda = 0).
  sampler: DDIM 50 steps (paper: unspecified) [I]; eps prediction [I] ('v' available).
  training degradations: the paper mentions noise + JPEG (Table 3) with unstated parameters;
    JPEG is not implemented (not jittable), AWGN via data.noise_sigma (0 by default) [I].
  training: all three parts trained separately on the true field and depth (MANet's stages
    1 and 2; the denoiser sees true conditions). At inference they see SVKR's estimates
    (MANet's stage 3, fine-tuning R on predicted kernels, is not implemented).
"""
import ml_collections
from ml_collections.config_dict import placeholder

from kfsr.presets import build

PRESETS = ("paper", "cpu", "test")


def _base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = "ssr"
    c.preset = "paper"
    c.scale = 4                 # almost certainly x4 (stripped) [P/I]
    c.seed = 0
    c.kernel_size = 21          # MANet's 21x21 at x4 [M]
    c.padding = "reflect"       # MANet: replicate [M]; kfsr's SV blur: reflect [I]
    c.sampling = "stride"       # direct subsampling x[::s, ::s] [M]
    c.offset = 0
    c.use_depth = True          # False: the depth-free ablation (MANet estimator, no depth encoder)
    c.part = "denoiser"         # what kfsr.train.supervised trains: dkenet | rrdb | denoiser
    c.checkpoints = ml_collections.ConfigDict()   # trained weights (training workdirs)
    c.checkpoints.dkenet = placeholder(str)   # None until set (placeholders: --config.* overrides)
    c.checkpoints.rrdb = placeholder(str)
    c.checkpoints.denoiser = placeholder(str)

    # ---------------- SVKR (paper §3.2, Algorithm 1; report §2.2)
    c.svkr = ml_collections.ConfigDict()
    c.svkr.n_iter = 3           # N = 3 [P]
    c.svkr.beta = 0.9           # beta = 0.9 [P]
    c.svkr.rule = "ema"         # Eq. 2 stripped: "ema" (report default) | "momentum" [R]
    c.svkr.init = "bicubic"     # I_0 [R]

    # ---------------- depth (M): a kfsr.depth provider (MiDaS v3.1 in the paper [P])
    c.depth = ml_collections.ConfigDict()
    c.depth.source = "sharpness"  # user | constant | synthetic | sharpness | position
    c.depth.path = placeholder(str)  # source 'user': .npy / greyscale image (larger = farther)
    c.depth.invert = False        # source 'user': flip near/far (MiDaS inverse depth)
    c.depth.value = 0.5           # source 'constant'
    c.depth.kind = "mixed"        # source 'synthetic'
    c.depth.seed = 0
    c.depth.sigma = placeholder(float)  # proxies: smoothing scale (None: max(H, W) / 32)
    c.depth.normalise = "minmax"  # on the LR grid [I]

    # ---------------- networks
    c.dkenet = ml_collections.ConfigDict()  # kfsr/nets/dkenet.py (report §2.3)
    c.dkenet.nf = 128           # MANet nf [M]
    c.dkenet.nf_depth = 64      # depth branch, nf / 2 [I]
    c.dkenet.sft_hidden = 32    # IKC's SFT [M]
    c.rrdb = ml_collections.ConfigDict()    # kfsr/nets/rrdb.py (report §2.4)
    c.rrdb.nf = 64
    c.rrdb.nb = 10              # "lightweight" RRDB: MANet stage 2 [R, M]
    c.rrdb.gc = 32
    c.rrdb.sft_hidden = 32
    c.pca = ml_collections.ConfigDict()     # per-pixel kernel codes (MANet [M])
    c.pca.rank = 15
    c.pca.samples = 150_000
    c.pca.seed = 0
    c.denoiser = ml_collections.ConfigDict()  # kfsr/nets/ssr_unet.py + amf.py (report §2.5)
    c.denoiser.ch = 320         # SD-2 UNet widths [R], here in pixel space [I]
    c.denoiser.mult = (1, 2, 4, 4)
    c.denoiser.n_res = 2
    c.denoiser.enc_n_res = 2    # LR half-UNet: the largest encoder [P]
    c.denoiser.kernel_width = 64   # small encoders [P]; widths [I]
    c.denoiser.depth_width = 64
    c.denoiser.amf_hidden = 128    # [P]
    c.denoiser.amf_norm = "batch"  # BN [P] (batch statistics) | group | none
    c.denoiser.injection = "add"   # add | sft [R]
    c.denoiser.zero_init = True    # zero-init FTB: adapter convention [R]
    c.denoiser.groups = 32

    # ---------------- diffusion (unspecified in the paper)
    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.T = 1000
    c.diffusion.schedule = "linear"   # DDPM 1e-4 -> 0.02 (pixel space) [I]
    c.diffusion.beta_start = 1e-4
    c.diffusion.beta_end = 0.02
    c.diffusion.prediction = "eps"    # eps | v
    c.diffusion.respace_train = placeholder(int)  # None: all T steps
    c.diffusion.sampler = "ddim"      # ddim | ddpm
    c.diffusion.respace_sample = 50
    c.diffusion.eta = 0.0
    c.diffusion.clip = True           # x0 prediction clipped to [-1, 1]
    # None: sample from noise at T (the paper). An int t: start from SVKR's RRDB image noised to
    # base timestep t (q_sample) and run the respaced steps at or below t: the diffusion refines
    # the SVKR image (a denoiser trained on a CPU budget cannot draw a good image from noise) [I]
    c.diffusion.t_start = placeholder(int)
    # None: the denoiser trains on every timestep (the paper). An int: only base timesteps
    # <= train_t_max, for a sampler that starts at t_start <= train_t_max [I]
    c.diffusion.train_t_max = placeholder(int)

    # ---------------- training data (kfsr/train/supervised.py + kfsr/train/depth_fields.py)
    c.data = ml_collections.ConfigDict()
    c.data.root = placeholder(str)   # None: ../shared/data
    c.data.folders = ("DF2K/HR",)     # MANet's data [M]; SSR's training set unspecified
    c.data.max_images = placeholder(int)
    c.data.crop = 192                 # MANet stage 1 [M]
    c.data.batch = 16                 # [M]
    c.data.augment = True
    c.data.quantize = True            # 8-bit LR [M]
    c.data.noise_sigma = 0.0          # AWGN (paper: noise + JPEG, parameters unstated)
    c.data.fixed = False
    c.data.kernel = ml_collections.ConfigDict()
    c.data.kernel.family = "depth_field"
    c.data.kernel.depth_kind = "mixed"   # kfsr.depth.synthetic_depth kinds
    c.data.kernel.lambda_min = placeholder(float)  # None: [0.175 s, min(2.5 s, 10)] [M]
    c.data.kernel.lambda_max = placeholder(float)
    c.data.kernel.focus = 0.0            # blur grows with depth [I]
    c.data.kernel.anisotropy = (0.0, 0.6)
    c.data.kernel.theta = placeholder(float)  # None: random orientation per crop
    c.data.kernel.recenter = "none"

    # ---------------- optimisation (MANet stage 1 [M]; SSR: unspecified)
    c.train = ml_collections.ConfigDict()
    c.train.steps = 300_000
    c.train.lr = 2e-4
    c.train.lr_milestones = (100_000, 150_000, 200_000, 250_000)
    c.train.lr_gamma = 0.5
    c.train.b1 = 0.9
    c.train.b2 = 0.999
    c.train.grad_clip = 0.0
    c.train.ema_decay = 0.999
    c.train.spike_factor = 0.0        # no loss-spike guard
    c.train.chunk = 100
    c.train.checkpoint_every = 50
    c.train.log_every = 1000
    c.train.max_minutes = 0.0
    # a trained model (workdir or model/) to start from: a fine-tune in a new workdir
    c.train.init_from = placeholder(str)

    # ---------------- sampling loop (kfsr.train.loop.run); one step = one reverse step
    c.loop = ml_collections.ConfigDict()
    c.loop.chunk = 10
    c.loop.mode = "auto"
    return c


def _cpu(c: ml_collections.ConfigDict) -> None:
    """x4, K 21, tiny networks (report §4.2 "ssr_tiny"), BSD100 crops of 64 (LR 16)."""
    c.preset = "cpu"
    c.dkenet.nf, c.dkenet.nf_depth, c.dkenet.sft_hidden = 16, 8, 16
    c.rrdb.nf, c.rrdb.nb, c.rrdb.gc = 32, 2, 16
    c.pca.rank = 10
    c.pca.samples = 20_000
    c.denoiser.ch = 32
    c.denoiser.mult = (1, 2)
    c.denoiser.n_res = 1
    c.denoiser.enc_n_res = 1
    c.denoiser.kernel_width = 16
    c.denoiser.depth_width = 8
    c.denoiser.amf_hidden = 32
    c.denoiser.amf_norm = "group"
    c.denoiser.zero_init = False     # trained from scratch
    c.denoiser.groups = 8
    c.diffusion.respace_sample = 50
    c.diffusion.t_start = 20         # SDEdit-style refinement of SVKR's image (docstring) [I]
    c.data.folders = ("BSD100/HR",)
    c.data.crop = 64
    c.data.batch = 8
    c.train.steps = 3000
    c.train.lr = 5e-4
    c.train.lr_milestones = ()
    c.train.ema_decay = 0.995
    c.train.chunk = 50
    c.train.checkpoint_every = 4
    c.train.log_every = 200


def _test(c: ml_collections.ConfigDict) -> None:
    """x2, K 11, very tiny networks on 32x32 crops (LR 16x16), a one-level denoiser, 4 DDIM
    steps."""
    c.preset = "test"
    c.scale = 2
    c.kernel_size = 11
    c.dkenet.nf, c.dkenet.nf_depth, c.dkenet.sft_hidden = 8, 8, 8
    c.rrdb.nf, c.rrdb.nb, c.rrdb.gc, c.rrdb.sft_hidden = 16, 1, 8, 16
    c.pca.rank = 8
    c.pca.samples = 2048
    c.denoiser.ch = 8
    c.denoiser.mult = (1,)           # one level + the middle block: 30 % less compile than
    #                                  (1, 2); the multi-level structure is checked by eval_shape
    c.denoiser.n_res = 1
    c.denoiser.enc_n_res = 1
    c.denoiser.kernel_width = 8
    c.denoiser.depth_width = 4
    c.denoiser.amf_hidden = 16
    c.denoiser.amf_norm = "group"
    c.denoiser.zero_init = False
    c.denoiser.groups = 4
    c.diffusion.respace_train = 20
    c.diffusion.respace_sample = 4
    c.data.folders = ("BSD100/HR",)
    c.data.max_images = 8
    c.data.crop = 32
    c.data.batch = 4
    c.data.kernel.depth_kind = "blobs"
    c.train.steps = 20
    c.train.lr = 5e-3
    c.train.lr_milestones = ()
    c.train.ema_decay = 0.9
    c.train.chunk = 10
    c.train.checkpoint_every = 1
    c.train.log_every = 0
    c.loop.chunk = 2


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
    return build("ssr.py", preset, PRESETS, _base, {"cpu": _cpu, "test": _test})
