"""DIP-DKP (Yang et al., CVPR 2024, "A Dynamic Kernel Prior Model for Unsupervised Blind Image
Super-Resolution"; official code XYLGroup/DKP @ 8a04570). Sources cited as dkp.md §n =
shared/reference/methods/dkp.md (a report on the official code), paper = papers/003_dkp.txt.

    python run.py --config=configs/dkp.py --input=lr.png              # cpu preset (default)
    python run.py --config=configs/dkp.py:paper --input=lr.png        # every official default
    python run.py --config=configs/dkp.py:test --input=lr.png         # tiny, for the tests

Presets
  paper  the released code's effective defaults (dkp.md §3.1): 200 outer iterations x 5 DIP steps,
         128-channel 5-scale skip net with non-local blocks, L = 5 random Gaussian kernels.
         Official PyTorch on 2 cores: ~16 min per 224x224 Set5 crop (1 thread, shared data README),
         84 min for 504x504 baby (dkp.md §8).
  cpu    (default) the same schedule shape at a fraction of the cost; see the measured numbers
         in `_cpu` below.
  test   a few outer iterations of a tiny net: seconds, for the test-suite.

Where the released code and the paper differ (dkp.md §10), this config follows the code and says so.
"""
import ml_collections
from ml_collections.config_dict import placeholder

from kfsr.presets import build

PRESETS = ("paper", "cpu", "test")


def _base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = "dkp"
    c.preset = "paper"
    c.scale = 4            # main.py --sf '4'; Table 2 is x4 (dkp.md §6.3)
    c.seed = 0             # main.py seeds numpy/torch with 0 (DIP input re-seeded with 1; dkp.md §3.1)
    c.kernel_size = placeholder(int)   # None -> min(4s+3, 21): 11/15/19/21 for x2/3/4/8 (model.py; dkp.md §2)
    # Forward model y = D_s(x *_circ k): circular padding, cross-correlation, stride s from offset 0
    # (Degradation.dkp(scale); dkp.md §2). Kernel centre of mass at (K - s)/2 (DKP convention).
    c.padding = "circular"
    c.offset = 0
    # Image disturbance added to y in the DIP data term: noise N(0, sigma^2), sigma ~ U[0, this]
    # (Settings Image_disturbance = 0/255: off; dkp.md §3.1). Units: [0,1] intensities.
    c.disturbance = 0.0
    # Return the iterate with the best LR consistency instead of the last one (not in the code,
    # which returns the last DIP output and kernel; dkp.md §3.3).
    c.track_best = False

    # ---------------- RKS: random kernel sampling -> kernel prior loss (kfsr/methods/rks.py)
    c.rks = ml_collections.ConfigDict()
    c.rks.mode = "code"        # 'code': fresh i.i.d. draws each outer iteration, as released
    #                            (no chain, no accept step; dkp.md §1.2, §10.2). 'mcmc': real MH chains.
    c.rks.L = 5                # main.py D_loop = 5 ("default >= 5"); paper Table 1 grid stripped (§10.8)
    c.rks.family = "gaussian"  # Settings kernel_type 'Gaussian'; motion paths not wired (dkp.md §3.5)
    # Gaussian prior eigenvalue range (variances, px^2). None -> kernels.dkp_prior_range(s):
    # [0.175s + (s-1), min(2.5s,10) + (s+6)] = [3.7, 20] at x4 (Settings var_min_add/var_max_add;
    # dkp.md §3.1). Wider than DKP's test range [0.7, 10] (§10.3).
    c.rks.lambda_range = placeholder(tuple)
    c.rks.line_length_range = placeholder(tuple)   # motion_line lengths (px); None -> (0.25K, 0.75K)
    c.rks.traj_steps = 500           # samples per random trajectory (motion_traj)
    c.rks.fix_x8_center = False      # official prior centre (s+1)*3/2 is wrong at x8 (dkp.md §3.1, §10.4)
    c.rks.center = "dkp"             # prior kernels' centre: 'dkp' (K - s)/2, the official data's;
    #   'aligned' K//2 + (s-1)/2 for data in DIV2KRK's / kfsr's convention (the bench sets it there) [kfsr]
    # MCMC mode only (not in the released code; paper Eq. 5-8 are stripped, dkp.md §10.2):
    c.rks.temperature = 0.05          # T of E = e / T_eff
    c.rks.temperature_mode = "relative"   # T_eff = T * e(k_theta) ('absolute': T_eff = T)
    c.rks.proposal = "auto"           # random walk for gaussian / motion_line, independence otherwise
    # Random-walk step sizes: on a synthetic x4 problem (tests/test_rks.py) T = 0.05 with steps 0.1
    # accept ~35 % of the moves (0.15: ~25 %) and the chains reach the true kernel in ~40 rounds.
    c.rks.step_log_lambda = 0.1       # random-walk std of log eigenvalues
    c.rks.step_theta = 0.1            # random-walk std of the angle (rad)
    c.rks.step_length = 1.0           # motion_line: random-walk std of the length (px)
    c.rks.step_angle = 0.1            # motion_line: random-walk std of the angle (rad)

    # ---------------- PKE: prior kernel estimator (kernel FCN, kfsr/nets/kernel_mlp.py)
    c.pke = ml_collections.ConfigDict()
    c.pke.lr = 1e-4            # Adam; Settings DIPDKP_kp_lr = 1e-4 (configs.py kp_lr 0.5 unused; dkp.md §3.1)
    c.pke.warmup_steps = 200   # Settings kernel_first_iteration = 200: MSE to random prior kernels
    #                            (not mentioned in the paper; dkp.md §10.1). Same Adam state as later.
    c.pke.code_dim = 200       # n_k = 200 (model.py)
    c.pke.hidden = 1000        # fcn num_hidden = 1000; paper Table 4 best cell is 3 layers x 100 (§10.6)
    # Paper Eq. 13 (network Langevin dynamics): a noise "disturbation" on the kernel-net update.
    # The released code injects none (the random kernels play that role; dkp.md §10.1): 0.
    # If > 0: theta += langevin_noise * N(0, I) after every kernel-net Adam step (prior and data).
    c.pke.langevin_noise = 0.0

    # ---------------- DIP (kfsr.nets.dip.SkipNet); official skip(...) call in model.py
    c.dip = ml_collections.ConfigDict()
    c.dip.lr = 5e-3            # configs dip_lr (Adam, default betas, no schedule)
    c.dip.num_scales = 5
    c.dip.channels_down = 128
    c.dip.channels_up = 128
    c.dip.channels_skip = 16
    # non-local blocks at scales i >= 2 (FKP's skip; dkp.md §3.2); None: none (typed: overridable)
    c.dip.nonlocal_from = ml_collections.FieldReference(2, field_type=int)
    c.dip.input_channels = 3   # 3-channel U[0,1)*0.1 fixed noise (get_noise(C, 'noise'))

    # ---------------- schedule (model.py train(); Settings)
    c.schedule = ml_collections.ConfigDict()
    c.schedule.outer_iters = 200   # max_iters = 1000 // I_loop_x (Settings overrides configs' 800)
    c.schedule.i_loop_x = 5        # DIP steps per outer iteration (main.py)
    c.schedule.i_loop_k = 3        # kernel data step every 3 GLOBAL DIP steps, losses accumulated,
    #                                accumulator reset each outer iteration (dkp.md §3.3)
    c.schedule.ssim_iters = 80     # 1-SSIM while outer index <= 80, then MSE (hard-coded in model.py;
    #                                conf.SSIM_iterations = 16 is unused; dkp.md §10.5)

    # ---------------- losses
    c.loss = ml_collections.ConfigDict()
    c.loss.grad_weight = 2e-4      # grad_loss_lr 1e-3 * noise2_mean 1 * 0.20 (Settings, model.py)
    c.loss.grad_exponent = 0.67    # hyper-Laplacian exponent (model.py)
    c.loss.grad_eps = 1e-8         # inside the power (model.py)

    # ---------------- loop driver (kfsr.train.loop.run); one step = one outer iteration
    c.loop = ml_collections.ConfigDict()
    c.loop.chunk = 10
    c.loop.mode = "auto"           # python loop of a jitted step on CPU (DESIGN.md §6)
    return c


def _cpu(c: ml_collections.ConfigDict) -> None:
    """Cheaper preset for 2 CPU cores, same schedule shape (RKS step + 5 DIP steps per outer
    iteration, kernel step every 3 DIP steps, SSIM for the first ~40 % of the run, then MSE).

    Measured on set5_c224_x4_dkp baby and bird (224x224 HR, x4; PSNR-Y, shave 4; 2 cores shared
    with 2-3 other jobs, so seconds are inflated ~2-3x):
      DIP 32/32 ch, 200 outer iters: 32.91 / 30.16 dB (mean 31.54), kernel PSNR 58.1, ~990 s
      DIP 16/16 ch, 200 outer iters: 32.34 / 30.11 dB (mean 31.23), kernel PSNR 58.1, ~730 s
      DIP 32/32 ch, 100 outer iters: baby 31.47 dB
      official PyTorch DIP-DKP (128 ch, 200): 33.18 / 30.95 dB (mean 32.07), ../shared/data/README
    32 channels keep 98 % of the official PSNR at about 1/16 of the DIP FLOPs. Re-measure on an
    idle machine (issue 3 benchmark).
    """
    c.preset = "cpu"
    c.dip.channels_down = 32
    c.dip.channels_up = 32


def _test(c: ml_collections.ConfigDict) -> None:
    """Tiny, for the tests: a 2-scale 16-channel DIP, a 100-unit kernel net, 30 outer iterations
    (a few seconds per run after compilation). The kernel-net learning rate is 10x the official
    one so that 30 iterations (50 data steps) move the kernel net about as far as the official
    run's 333 data steps; with it tests/test_dkp.py recovers an x2 Gaussian kernel from a 64x64
    crop (with 1000 hidden units and lr 1e-3 the kernel overshoots in the first iterations)."""
    c.preset = "test"
    c.pke.lr = 1e-3
    c.pke.hidden = 100           # paper Table 4: 100 hidden units work as well as 1000
    c.dip.num_scales = 2
    c.dip.channels_down = 16
    c.dip.channels_up = 16
    c.dip.channels_skip = 4
    c.dip.nonlocal_from = None
    c.schedule.outer_iters = 30
    c.schedule.ssim_iters = 25   # crosses the SSIM -> MSE switch (official: 80 of 200)
    c.loop.chunk = 10


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
    return build("dkp.py", preset, PRESETS, _base, {"cpu": _cpu, "test": _test})
