"""Writes tests/golden/sample.safetensors: the diffusers schedulers SDXL uses, run by diffusers
itself, for sample.c to reproduce.

    pip install torch diffusers safetensors numpy
    python3 scripts/make_golden_sample.py

What it holds (T = 1000 training steps, the SDXL base scheduler config below):
  table.betas, table.alphas_cumprod, table.sigmas    the shared tables (scaled_linear)
  table.sigmas.exact                                 the sigma table under ExactScalarMath
  table.linear.betas                                 beta_schedule "linear" (0.0001 .. 0.02)
  sched.<sampler>.<spacing>.<steps>.timesteps        set_timesteps(steps) for one scheduler
  sched.<...>.sigmas / .init_noise_sigma             (DDIM has no sigmas)
  sched.<...>.exact.sigmas / .exact.init_noise_sigma the same under ExactScalarMath
  traj.<sampler>.<spacing>.<pred>.<steps>            (steps+1, 1, 4, 4, 8): the latents before the
                                                     first step and after every step, under
                                                     ExactScalarMath
  traj.<...>.final_cpu                               the last latents of the same run by diffusers
                                                     as it is, on the CPU
  traj.<...>.next_randn                              euler_a: torch.randn(8) drawn from the
                                                     generator after the run (what it consumed)
  fake_model.c                                       the fake model's constant term
  cfg.uncond, cfg.cond, cfg.out.<scale>              classifier-free guidance combination

The sampling runs mirror StableDiffusionXLPipeline's loop: latents = randn(generator seeded 42) *
init_noise_sigma, then per timestep t: x_in = scale_model_input(latents, t); eps = model(x_in, t);
latents = scheduler.step(eps, t, latents, generator=...). The model is a fake one that sample.c's
test computes with the same f32 roundings: eps = a(t) * x_in + c with a(t) = (0.5f * t) / 1000f.

ExactScalarMath (below) changes two things in torch while diffusers runs: division of a latent by
a scalar follows torch's CUDA rule (what SDXL on a GPU computes), and sqrt/log/exp are correctly
rounded instead of MKL's. Under it, sample.c must agree bit for bit; with diffusers as it is, within
the tolerances tests/test_sample.c states.
"""
import math

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

import diffusers
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler)

from golden_common import save

SEED = 42
SHAPE = (1, 4, 4, 8)  # a small latent: 128 values (>= 16, so torch.randn takes its vectorised path)

# stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json
SDXL_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def make_scheduler(sampler, spacing="leading", prediction="epsilon"):
    cfg = dict(SDXL_CONFIG, timestep_spacing=spacing, prediction_type=prediction)
    if sampler == "euler":
        return EulerDiscreteScheduler.from_config(cfg)
    if sampler == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(cfg)
    if sampler == "ddim":
        return DDIMScheduler.from_config(cfg)
    if sampler == "dpmpp_2m_karras":
        return DPMSolverMultistepScheduler.from_config(cfg, use_karras_sigmas=True, algorithm_type="dpmsolver++",
                                                       solver_order=2)
    raise ValueError(sampler)


def _elementwise_f64(t, fn):
    """fn applied in float64 to each value of the f32 tensor t, rounded once to f32."""
    vals = [fn(v) for v in t.detach().double().flatten().tolist()]
    return torch.tensor(vals, dtype=torch.float64).reshape(t.shape).to(t.dtype)


def _log(v):
    return -math.inf if v == 0.0 else math.log(v)


def _exp(v):
    try:
        return math.exp(v)
    except OverflowError:
        return math.inf


class ExactScalarMath(TorchFunctionMode):
    """Two changes to torch's arithmetic while diffusers runs, so that sample.c can be held to the
    bit (everything else is diffusers' own code and torch's own f32 operations):
      - tensor / scalar as torch's CUDA kernel computes it when the divisor is a CPU scalar (a
        0-dim tensor or a Python number): tensor * (1 / scalar), the reciprocal rounded to f32;
      - sqrt (and ** 0.5), log and exp correctly rounded. torch's CPU sqrt is MKL's vsSqrt, which
        is 1 ulp off for about a fifth of f32 inputs, and its log/exp (MKL/SLEEF) are 1-ulp
        accurate: neither can be reproduced outside MKL, so sample.c uses sqrtf and libm's
        double log/exp rounded to f32, and the plain diffusers run is compared within a tolerance."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.div, torch.div, torch.true_divide) and not kwargs and len(args) == 2:
            a, b = args
            scalar = isinstance(b, (int, float)) or (isinstance(b, torch.Tensor) and b.dim() == 0)
            if isinstance(a, torch.Tensor) and a.dim() > 0 and scalar:
                return a * torch.reciprocal(torch.as_tensor(b, dtype=a.dtype))
        name = getattr(func, "__name__", "")  # `t ** 0.5` arrives as a Python wrapper named pow
        if name in ("pow", "__pow__") and not kwargs and len(args) == 2 and isinstance(args[1], float) and args[1] == 0.5:
            return _elementwise_f64(args[0], math.sqrt)  # sqrt in double, rounded once: correctly rounded
        if func in (torch.sqrt, torch.Tensor.sqrt) and not kwargs and len(args) == 1:
            return _elementwise_f64(args[0], math.sqrt)
        if func in (torch.log, torch.Tensor.log) and not kwargs and len(args) == 1:
            return _elementwise_f64(args[0], _log)
        if func in (torch.exp, torch.Tensor.exp) and not kwargs and len(args) == 1:
            return _elementwise_f64(args[0], _exp)
        return func(*args, **kwargs)


C = (torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(7)) * 0.1).float()


def fake_model(x_in, t):
    a = np.float32(np.float32(0.5) * np.float32(float(t))) / np.float32(1000)  # f32 roundings, as the C test
    return torch.tensor(a, dtype=torch.float32) * x_in + C


def run(sampler, spacing, prediction, steps):
    sched = make_scheduler(sampler, spacing, prediction)
    sched.set_timesteps(steps)
    gen = torch.Generator("cpu").manual_seed(SEED)
    latents = torch.randn(SHAPE, generator=gen, dtype=torch.float32) * sched.init_noise_sigma
    kwargs = {"generator": gen} if sampler == "euler_a" else {}
    traj = [latents]
    for t in sched.timesteps:
        x_in = sched.scale_model_input(latents, t)
        eps = fake_model(x_in, t)
        latents = sched.step(eps, t, latents, **kwargs, return_dict=False)[0]
        traj.append(latents)
    return torch.stack(traj), torch.randn(8, generator=gen)


tensors = {"fake_model.c": C}

# The shared tables, from the scheduler every sampler shares them with.
euler = make_scheduler("euler")
tensors["table.betas"] = euler.betas
tensors["table.alphas_cumprod"] = euler.alphas_cumprod
tensors["table.sigmas"] = ((1 - euler.alphas_cumprod) / euler.alphas_cumprod) ** 0.5
with ExactScalarMath():
    tensors["table.sigmas.exact"] = ((1 - euler.alphas_cumprod) / euler.alphas_cumprod) ** 0.5
tensors["table.linear.betas"] = EulerDiscreteScheduler.from_config(dict(SDXL_CONFIG, beta_schedule="linear",
                                                                        beta_start=0.0001, beta_end=0.02)).betas


def schedule(sampler, spacing, steps):
    sched = make_scheduler(sampler, spacing)
    sched.set_timesteps(steps)
    sigmas = sched.sigmas.to(torch.float32) if sampler != "ddim" else None  # DDIM has no sigmas
    return sched.timesteps.to(torch.float32), sigmas, torch.tensor([float(sched.init_noise_sigma)])


# Schedules: timesteps, sigmas, init_noise_sigma after set_timesteps(steps), by diffusers as it is
# and under ExactScalarMath (.exact).
schedules = [
    ("euler", "leading", [1, 2, 3, 7, 25, 30, 50, 999, 1000]),
    ("euler", "linspace", [1, 3, 25, 50]),
    ("euler", "trailing", [1, 3, 25, 50]),
    ("euler_a", "leading", [3, 25]),
    ("euler_a", "trailing", [3]),
    ("ddim", "leading", [1, 3, 25, 50, 999]),
    ("ddim", "linspace", [3, 25]),
    ("ddim", "trailing", [3, 25]),
    ("dpmpp_2m_karras", "leading", [1, 2, 3, 25, 50, 100, 1000]),
]
for sampler, spacing, step_counts in schedules:
    for steps in step_counts:
        key = f"sched.{sampler}.{spacing}.{steps}"
        timesteps, sigmas, init = schedule(sampler, spacing, steps)
        with ExactScalarMath():
            timesteps_x, sigmas_x, init_x = schedule(sampler, spacing, steps)
        assert torch.equal(timesteps, timesteps_x), key
        tensors[key + ".timesteps"] = timesteps
        tensors[key + ".init_noise_sigma"] = init
        tensors[key + ".exact.init_noise_sigma"] = init_x
        if sigmas is not None:
            tensors[key + ".sigmas"] = sigmas
            tensors[key + ".exact.sigmas"] = sigmas_x

# Trajectories through the real scheduler.step loops.
runs = [
    ("euler", "leading", "epsilon", [1, 3, 25, 50]),
    ("euler", "linspace", "epsilon", [4]),
    ("euler", "trailing", "epsilon", [4]),
    ("euler_a", "leading", "epsilon", [3, 25]),
    ("ddim", "leading", "epsilon", [3, 25]),
    ("dpmpp_2m_karras", "leading", "epsilon", [3, 25]),
    ("euler", "leading", "v_prediction", [3]),
    ("euler_a", "leading", "v_prediction", [3]),
    ("ddim", "leading", "v_prediction", [3]),
    ("dpmpp_2m_karras", "leading", "v_prediction", [3]),
]
for sampler, spacing, prediction, step_counts in runs:
    for steps in step_counts:
        key = f"traj.{sampler}.{spacing}.{'v' if prediction == 'v_prediction' else 'eps'}.{steps}"
        with ExactScalarMath():
            traj, next_randn = run(sampler, spacing, prediction, steps)
        tensors[key] = traj
        if sampler == "euler_a":
            tensors[key + ".next_randn"] = next_randn
        traj_cpu, _ = run(sampler, spacing, prediction, steps)
        tensors[key + ".final_cpu"] = traj_cpu[-1]
        print(f"{key}: max |exact - diffusers on the CPU| at the end {(traj[-1] - traj_cpu[-1]).abs().max():.3g}")

# Classifier-free guidance as the SDXL pipeline writes it (f32, on the CPU).
g = torch.Generator("cpu").manual_seed(3)
uncond = torch.randn(SHAPE, generator=g)
cond = torch.randn(SHAPE, generator=g)
tensors["cfg.uncond"], tensors["cfg.cond"] = uncond, cond
for scale in (1.0, 5.0, 7.5):
    tensors[f"cfg.out.{scale}"] = uncond + scale * (cond - uncond)

save(tensors, "sample.safetensors", __file__, SEED, {"diffusers_sdxl_config": SDXL_CONFIG,
                                                      "latent_shape": "x".join(map(str, SHAPE))})
print("diffusers", diffusers.__version__)
