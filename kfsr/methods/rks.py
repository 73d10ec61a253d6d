"""Random Kernel Sampling (RKS): DKP's kernel-prior loss (paper §3, Eq. 3-8; dkp.md §3.3, §10.2).

Each outer iteration, L candidate kernels k_l are scored by how well they explain the LR image
with the current HR estimate x:

    e_l = mean( (D_s(x *_P k_l) - y)^2 )                     (always MSE, as the code does)
    p_l = (e_l - min_j e_j) / (1e-5 + sum_j (e_j - min_j e_j))
    w_l = -(1 - p_l)^2 * ln(p_l + 1e-3)                      (stop-gradient; best kernel: 6.91)
    prior loss = sum_l w_l * mean( (k_l - k_theta)^2 )

which pulls the kernel net's output k_theta towards the weighted mean of the candidates with
strength sum_l w_l (dkp.md §3.3). All L (or 2L+1) candidates are scored with ONE batched FFT blur
(`kfsr.degrade.ops.blur_many`, circular padding by default) followed by stride sampling.

Two ways to get the candidates (`mode`):

- ``'code'`` (the released code, DIPDKP/model/model.py `MCMC_sampling`): L fresh i.i.d. draws from
  the kernel family every outer iteration; no state is carried between iterations and there is
  no accept/reject step, although the paper calls it MCMC (dkp.md §1.2, §10.2).
- ``'mcmc'``: a real Metropolis-Hastings chain, L chains in parallel, targeting
  pi_t(k) ∝ prior(k) * exp(-e(k | x_t, y) / T) for the current HR estimate x_t. The chain state
  (kernel parameters and kernels) is carried in the method state between outer iterations; each
  outer iteration every chain proposes one move, current and proposed kernels are re-scored on the
  current x_t (the target changes as x_t changes), and the move is accepted with probability
  min(1, pi(k') q(k|k') / (pi(k) q(k'|k))). Proposals:
    * gaussian: random walk on (log lambda1, log lambda2, theta), log-eigenvalues reflected into
      the prior's range, theta wrapped mod pi; the prior is DKP's (uniform eigenvalues), so the
      log-space Jacobian lambda1 * lambda2 enters the acceptance ratio;
    * motion_line: random walk on (length, angle), length reflected into its range, angle mod pi;
    * motion_traj / mixed (no low-dimensional parametrisation): independence proposals = fresh
      prior draws, for which the acceptance ratio reduces to exp(-(E' - E)).
  The energy is E = e / T_eff with ``temperature_mode='absolute'``: T_eff = T, or
  ``'relative'``: T_eff = T * e(k_theta), the error of the kernel net's current kernel (so T is
  scale-free: a kernel whose error is 10 % above k_theta's costs 0.1/T). The prior loss then uses
  the chains' current kernels with the same weights w_l (computed from their current errors).

Families (centred at DKP's convention, centre of mass (K - s)/2, to match DKP's forward model;
``center='aligned'``: kfsr's / DIV2KRK's K//2 + (s-1)/2, for data made in that convention, where
LR pixel i sits at HR s*i + (s-1)/2 as bicubic assumes; `kernels.target_center`):
``'gaussian'`` = DIP-DKP's random prior (`kernels.dkp_prior_kernel`: eigenvalues in
`dkp_prior_range(s)`, official spline re-centring to (s+1)*3/2, i.e. 7.5 at x4),
``'motion_line'`` (`kernels.line_motion`), ``'motion_traj'`` (`kernels.trajectory_motion`,
Boracchi-Foi random camera shake as DeblurGAN / the paper [22]) and ``'mixed'`` (uniform choice of
the three). Everything is jittable and vmappable; keys are explicit.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from kfsr.degrade import kernels as kern
from kfsr.errors import KfsrInputError

FAMILIES = ("gaussian", "motion_line", "motion_traj", "mixed")
MODES = ("code", "mcmc")
_PARAM_DIM = {"gaussian": 3, "motion_line": 2}  # families with a random-walk parametrisation

# DKP focal-style weight constants (model.py: sum starts at 1e-5; log(p + 1e-3))
WEIGHT_SUM_EPS = 1e-5
WEIGHT_LOG_EPS = 1e-3


# --------------------------------------------------------------------------------------------
# scoring and weights (pure functions)
# --------------------------------------------------------------------------------------------
def reconstruction_errors(hr: jax.Array, ks: jax.Array, lr: jax.Array, scale: int,
                          padding: str = "circular", offset: int = 0) -> jax.Array:
    """e_l = mean((D_s(hr *_P k_l) - lr)^2) for every kernel of ks (L,K,K): ONE batched FFT blur.

    hr (H,W,C), lr (h,w,C) -> (L,).
    """
    from kfsr.degrade import ops

    blurred = ops.blur_many(hr, ks, padding=padding)  # (L, H, W, C)
    down = blurred[:, offset::scale, offset::scale]
    down = down[:, :lr.shape[0], :lr.shape[1]]
    return jnp.mean(jnp.square(down - lr[None]), axis=(1, 2, 3))


def rks_weights(errors: jax.Array) -> jax.Array:
    """DKP's weights: p = (e - min e)/(1e-5 + sum(e - min e)); w = -(1-p)^2 ln(p + 1e-3)."""
    e = jax.lax.stop_gradient(errors)
    d = e - jnp.min(e)
    p = d / (WEIGHT_SUM_EPS + jnp.sum(d))
    return jax.lax.stop_gradient(-jnp.square(1.0 - p) * jnp.log(p + WEIGHT_LOG_EPS))


def prior_loss(k_theta: jax.Array, ks: jax.Array, weights: jax.Array) -> jax.Array:
    """sum_l w_l * mean((k_l - k_theta)^2) (torch MSELoss per candidate, DKP's k_losses)."""
    d = jnp.mean(jnp.square(jax.lax.stop_gradient(ks) - k_theta[None]), axis=(1, 2))
    return jnp.sum(jax.lax.stop_gradient(weights) * d)


# --------------------------------------------------------------------------------------------
# the sampler
# --------------------------------------------------------------------------------------------
def _reflect(u, lo, hi):
    """Reflect u into [lo, hi] (symmetric boundary handling of a random walk)."""
    w = hi - lo
    v = jnp.mod(u - lo, 2.0 * w)
    return lo + jnp.where(v > w, 2.0 * w - v, v)


@dataclasses.dataclass(frozen=True)
class RKS:
    """Static description of an RKS sampler (hashable: safe to close over in jitted code).

    Use `RKS.from_config(config.rks, scale, kernel_size)` or construct directly.
    """

    scale: int
    kernel_size: int
    family: str = "gaussian"
    num_samples: int = 5                 # L (DKP D_loop = 5)
    mode: str = "code"
    temperature: float = 0.05
    temperature_mode: str = "relative"   # 'relative' | 'absolute'
    proposal: str = "auto"               # 'auto' | 'random_walk' | 'independence'
    step_log_lambda: float = 0.1         # random-walk std of log eigenvalues
    step_theta: float = 0.1              # random-walk std of the Gaussian angle (rad)
    step_length: float = 1.0             # random-walk std of the line length (px)
    step_angle: float = 0.1              # random-walk std of the line angle (rad)
    lambda_range: tuple | None = None    # None: kernels.dkp_prior_range(scale)
    line_length_range: tuple | None = None   # None: kernels.line_motion default (0.25K, 0.75K)
    traj_steps: int = 500                # trajectory samples per motion kernel
    fix_x8_center: bool = False          # DKP's prior centre is (s+1)*3/2 (wrong at x8; dkp.md §3.1)
    center: str = "dkp"                  # centre convention of every family: 'dkp' | 'aligned'
    padding: str = "circular"
    offset: int = 0

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise KfsrInputError(f"rks.family: unknown family {self.family!r}; expected one of {FAMILIES}")
        if self.mode not in MODES:
            raise KfsrInputError(f"rks.mode: unknown mode {self.mode!r}; expected one of {MODES}")
        if self.temperature_mode not in ("relative", "absolute"):
            raise KfsrInputError(f"rks.temperature_mode: {self.temperature_mode!r}; use 'relative' or 'absolute'")
        if self.proposal not in ("auto", "random_walk", "independence"):
            raise KfsrInputError(f"rks.proposal: {self.proposal!r}; use 'auto', 'random_walk' or 'independence'")
        if self.proposal == "random_walk" and self.family not in _PARAM_DIM:
            raise KfsrInputError(f"rks.proposal: 'random_walk' needs a parametric family "
                                 f"({', '.join(_PARAM_DIM)}), not {self.family!r}")
        if self.center not in ("dkp", "aligned"):
            raise KfsrInputError(f"rks.center: {self.center!r}; use 'dkp' (DKP's data) or 'aligned' "
                                 "(K//2 + (s-1)/2: DIV2KRK's, kfsr's spatially variant sets)")
        if self.num_samples < 0:
            raise KfsrInputError(f"rks.L: must be >= 0, got {self.num_samples}")
        if not self.temperature > 0:
            raise KfsrInputError(f"rks.temperature: must be > 0, got {self.temperature}")

    @classmethod
    def from_config(cls, cfg, scale: int, kernel_size: int, padding: str = "circular",
                    offset: int = 0) -> "RKS":
        g = lambda name, default: cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)  # noqa: E731
        tup = lambda v: None if v is None else tuple(float(a) for a in v)  # noqa: E731
        return cls(
            scale=int(scale), kernel_size=int(kernel_size), family=g("family", "gaussian"),
            num_samples=int(g("L", 5)), mode=g("mode", "code"),
            temperature=float(g("temperature", 0.05)),
            temperature_mode=g("temperature_mode", "relative"), proposal=g("proposal", "auto"),
            step_log_lambda=float(g("step_log_lambda", 0.1)), step_theta=float(g("step_theta", 0.1)),
            step_length=float(g("step_length", 1.0)), step_angle=float(g("step_angle", 0.1)),
            lambda_range=tup(g("lambda_range", None)),
            line_length_range=tup(g("line_length_range", None)),
            traj_steps=int(g("traj_steps", 500)), fix_x8_center=bool(g("fix_x8_center", False)),
            center=str(g("center", "dkp")), padding=padding, offset=int(offset))

    # ---------------------------------------------------------------- family details
    @property
    def lambdas(self):
        return self.lambda_range if self.lambda_range is not None else kern.dkp_prior_range(self.scale)

    @property
    def line_lengths(self):
        if self.line_length_range is not None:
            return self.line_length_range
        return (0.25 * self.kernel_size, 0.75 * self.kernel_size)

    @property
    def random_walk(self) -> bool:
        if self.proposal == "independence":
            return False
        return self.family in _PARAM_DIM

    @property
    def param_dim(self) -> int:
        return _PARAM_DIM.get(self.family, 1)

    def _gaussian_center(self):
        if self.center == "aligned":
            return kern.target_center(self.kernel_size, self.scale, "aligned")
        if self.fix_x8_center:
            return kern.target_center(self.kernel_size, self.scale, "dkp")
        return (self.scale + 1) * 3 / 2  # DKP Settings kernel_x = kernel_y

    def gaussian_from_params(self, u):
        """DKP prior Gaussian from u = (log lambda1, log lambda2, theta)."""
        k = self.kernel_size
        return kern.gaussian_from_params(
            k, jnp.exp(u[0]), jnp.exp(u[1]), u[2], self._gaussian_center(),
            mean=kern.target_center(k, self.scale, "aligned"), recenter="spline")

    def line_from_params(self, u):
        """Line-motion kernel from u = (length, angle), centre of mass per `center`."""
        return kern.line_motion(jax.random.key(0), self.kernel_size, length_range=(u[0], u[0]),
                                angle_range=(u[1], u[1]), scale=self.scale, convention=self.center)

    def kernel_from_params(self, u):
        if self.family == "gaussian":
            return self.gaussian_from_params(u)
        if self.family == "motion_line":
            return self.line_from_params(u)
        raise KfsrInputError(f"family {self.family!r} has no parametrisation")

    def sample_params(self, key):
        """A prior draw of the parameters (parametric families)."""
        if self.family == "gaussian":
            lo, hi = self.lambdas
            l1, l2, th = kern.sample_gaussian_params(key, lo, hi)
            return jnp.stack([jnp.log(l1), jnp.log(l2), th])
        if self.family == "motion_line":
            lo, hi = self.line_lengths
            k1, k2 = jax.random.split(key)
            return jnp.stack([jax.random.uniform(k1, (), jnp.float32, lo, hi),
                              jax.random.uniform(k2, (), jnp.float32, 0.0, math.pi)])
        return jnp.zeros((1,), jnp.float32)

    def _sample_gaussian(self, key):
        lo, hi = self.lambdas
        l1, l2, th = kern.sample_gaussian_params(key, lo, hi)
        return self.gaussian_from_params(jnp.stack([jnp.log(l1), jnp.log(l2), th]))

    def _sample_line(self, key):
        return kern.line_motion(key, self.kernel_size, length_range=self.line_lengths,
                                angle_range=(0.0, math.pi), scale=self.scale, convention=self.center)

    def _sample_traj(self, key):
        return kern.trajectory_motion(key, self.kernel_size, scale=self.scale, convention=self.center,
                                      n_steps=self.traj_steps)

    def sample(self, key) -> jax.Array:
        """One prior kernel (K, K) of the family."""
        if self.family == "gaussian":
            return self._sample_gaussian(key)
        if self.family == "motion_line":
            return self._sample_line(key)
        if self.family == "motion_traj":
            return self._sample_traj(key)
        kc, kk = jax.random.split(key)
        i = jax.random.randint(kc, (), 0, 3)
        return jax.lax.switch(i, [self._sample_gaussian, self._sample_line, self._sample_traj], kk)

    def sample_many(self, key, n: int) -> jax.Array:
        """n i.i.d. prior kernels (n, K, K)."""
        return jax.vmap(self.sample)(jax.random.split(key, n))

    # ---------------------------------------------------------------- chain state
    def init(self, key) -> dict:
        """Chain state: {} in 'code' mode; {'params': (L,P), 'kernels': (L,K,K)} in 'mcmc' mode."""
        if self.mode == "code":
            return {}
        n = self.num_samples
        keys = jax.random.split(key, n)
        if self.random_walk:
            params = jax.vmap(self.sample_params)(keys)
            ks = jax.vmap(self.kernel_from_params)(params)
        else:
            params = jnp.zeros((n, self.param_dim), jnp.float32)
            ks = jax.vmap(self.sample)(keys)
        return {"params": params, "kernels": ks.astype(jnp.float32)}

    def _log_prior(self, u):
        """Log prior density of the random-walk coordinates (up to a constant)."""
        if self.family == "gaussian":  # uniform eigenvalues -> Jacobian exp(u0 + u1) in log space
            return u[..., 0] + u[..., 1]
        return jnp.zeros(u.shape[:-1], jnp.float32)

    def _propose_params(self, key, u):
        if self.family == "gaussian":
            lo, hi = self.lambdas
            step = jnp.array([self.step_log_lambda, self.step_log_lambda, self.step_theta], jnp.float32)
            v = u + step * jax.random.normal(key, u.shape, jnp.float32)
            ll = _reflect(v[..., :2], math.log(lo), math.log(hi))
            th = jnp.mod(v[..., 2:], math.pi)
            return jnp.concatenate([ll, th], axis=-1)
        lo, hi = self.line_lengths
        step = jnp.array([self.step_length, self.step_angle], jnp.float32)
        v = u + step * jax.random.normal(key, u.shape, jnp.float32)
        return jnp.concatenate([_reflect(v[..., :1], lo, hi), jnp.mod(v[..., 1:], math.pi)], axis=-1)

    def step(self, chain: dict, key, hr: jax.Array, lr: jax.Array, k_theta: jax.Array
             ) -> tuple[jax.Array, jax.Array, dict, dict[str, Any]]:
        """One RKS round on the HR estimate `hr` (stop-gradient inside).

        Returns (kernels (L,K,K), weights (L,), new chain state, metrics dict of scalars).
        """
        hr = jax.lax.stop_gradient(hr)
        k_theta = jax.lax.stop_gradient(k_theta)
        n = self.num_samples
        if self.mode == "code":
            ks = self.sample_many(key, n)
            e = reconstruction_errors(hr, ks, lr, self.scale, self.padding, self.offset)
            w = rks_weights(e)
            return ks, w, chain, {"rks_err_min": jnp.min(e), "rks_w_sum": jnp.sum(w)}

        kp, ka = jax.random.split(key)
        cur_p, cur_k = chain["params"], chain["kernels"]
        if self.random_walk:
            prop_p = self._propose_params(kp, cur_p)
            prop_k = jax.vmap(self.kernel_from_params)(prop_p)
        else:
            prop_p = cur_p
            prop_k = self.sample_many(kp, n)
        all_k = jnp.concatenate([k_theta[None], cur_k, prop_k], axis=0)  # one batched FFT blur
        e_all = reconstruction_errors(hr, all_k, lr, self.scale, self.padding, self.offset)
        e_theta, e_cur, e_prop = e_all[0], e_all[1:n + 1], e_all[n + 1:]
        t_eff = self.temperature * (e_theta if self.temperature_mode == "relative" else 1.0)
        t_eff = jnp.maximum(t_eff, 1e-20)
        log_alpha = -(e_prop - e_cur) / t_eff
        if self.random_walk:
            log_alpha = log_alpha + self._log_prior(prop_p) - self._log_prior(cur_p)
        u = jax.random.uniform(ka, (n,), jnp.float32)
        accept = jnp.log(jnp.maximum(u, 1e-30)) < log_alpha
        new_p = jnp.where(accept[:, None], prop_p, cur_p)
        new_k = jnp.where(accept[:, None, None], prop_k, cur_k)
        e_new = jnp.where(accept, e_prop, e_cur)
        w = rks_weights(e_new)
        metrics = {"rks_accept": jnp.mean(accept.astype(jnp.float32)),
                   "rks_energy": jnp.mean(e_new / t_eff),
                   "rks_err_min": jnp.min(e_new), "rks_w_sum": jnp.sum(w)}
        return new_k, w, {"params": new_p, "kernels": new_k}, metrics
