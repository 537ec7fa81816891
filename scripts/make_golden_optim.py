"""Writes tests/golden/optim/*.safetensors: the trainer's optimizer arithmetic as torch and diffusers
compute it on the CPU (float32), for optim.c to reproduce.

    pip install torch diffusers safetensors numpy
    python3 scripts/make_golden_optim.py          (from the repository root, or from scripts/)

Files and what they hold:
  adamw.safetensors    adamw.<case>.{config, step0, param0, exp_avg0, exp_avg_sq0, grads}: the
                       inputs (config = [lr, beta1, beta2, eps, weight_decay] in f64; step0 = the
                       step count before the first update, 0 for a fresh optimizer), then
                       .params (steps, n): the parameters after each torch.optim.AdamW step,
                       .params.exact: the same under ExactMath (below), and .exp_avg, .exp_avg_sq:
                       the moments after the last step (ExactMath does not change them)
  scaler.safetensors   scaler.<case>.{config, grads, loss}: a torch.amp.GradScaler("cpu") run
                       (config = [init_scale, growth_factor, backoff_factor, growth_interval] f64)
                       with the scaled gradients each step; .unscaled (the gradients after
                       unscale_), .found_inf, .scaled_loss, .inv_scale, .scale and .tracker (after
                       update()) per step
  clip.safetensors     clip.<case>.{sizes, max_norm, grads}: torch.nn.utils.clip_grad_norm_ on
                       len(sizes) tensors; .out and .total from torch, .out.exact and .total.exact
                       under ExactMath
  lr.safetensors       lr.<schedule>.w<warmup>.t<total> (f64, 30 values): the lr of optimizer
                       updates 0..29 under diffusers.optimization.get_scheduler(<schedule>, ...)
                       with base lr LR_BASE
  trainer.safetensors  trainer.*: 8 training steps as accelerate runs them with fp16 mixed
                       precision (see trainer_run below), one with an inf gradient

ExactMath (below) makes two things exact while torch runs, so that optim.c can be held to the bit
everywhere else: torch.sqrt is correctly rounded (torch's CPU sqrt is MKL's vsSqrt, 1 ulp off for
about a fifth of f32 inputs), and vector norms are a sequential double sum of squares rounded to
f32 (torch sums f32 in an order of its own). Everything else is torch's own code and f32 arithmetic.
"""
import math

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

import diffusers
from diffusers.optimization import get_scheduler

from golden_common import save

SEED = 1234
LR_BASE = 1e-4  # the lr schedules' base learning rate (diffusers' LoRA scripts' default)
LR_SCHEDULES = ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]


def _sqrt_exact(t):
    """sqrt in double of an f32 tensor, rounded once to f32: the correctly rounded root."""
    out = np.sqrt(t.detach().to(torch.float64).numpy()).astype(np.float32)
    return torch.from_numpy(out).reshape(t.shape)


def _norm_exact(t):
    """||t||_2 as optim.c computes it: a sequential double sum of squares, sqrt, rounded to f32."""
    s = 0.0
    for v in t.detach().reshape(-1).to(torch.float64).tolist():
        s += v * v
    return torch.tensor(math.sqrt(s), dtype=torch.float64).to(torch.float32)


class ExactMath(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.sqrt, torch.Tensor.sqrt) and not kwargs and len(args) == 1:
            return _sqrt_exact(args[0])
        if func is torch._foreach_norm:
            ord_ = args[1] if len(args) > 1 else kwargs.get("ord", 2)
            assert float(ord_) == 2.0
            return [_norm_exact(t) for t in args[0]]
        if func is torch.linalg.vector_norm:
            ord_ = args[1] if len(args) > 1 else kwargs.get("ord", 2)
            assert float(ord_) == 2.0 and len(args) <= 2 and set(kwargs) <= {"ord"}
            return _norm_exact(args[0])
        return func(*args, **kwargs)


gen = torch.Generator("cpu")


def reseed(section):
    """Each golden file draws from its own seed, so changing one leaves the others as they are."""
    gen.manual_seed(SEED + section)


def randn(*shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float32)


def f64(values):
    return torch.tensor(values, dtype=torch.float64)


# ----------------------------------------------------------------------------
# AdamW: torch.optim.AdamW on one tensor (the trainer's flat vector), single-tensor path.

def adamw_run(cfg, step0, param0, m0, v0, grads, exact):
    lr, beta1, beta2, eps, wd = cfg
    p = torch.nn.Parameter(param0.clone())
    opt = torch.optim.AdamW([p], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd, foreach=False,
                            fused=False)
    if step0 > 0:  # a resumed optimizer: its state as a checkpoint would restore it
        opt.state[p] = {"step": torch.tensor(float(step0), dtype=torch.float32),
                        "exp_avg": m0.clone(), "exp_avg_sq": v0.clone()}
    params = []
    for g in grads:
        p.grad = g.clone()
        if exact:
            with ExactMath():
                opt.step()
        else:
            opt.step()
        params.append(p.detach().clone())
    st = opt.state[p]
    assert st["step"].item() == step0 + len(grads)
    return torch.stack(params), st["exp_avg"].clone(), st["exp_avg_sq"].clone()


def adamw_grads(steps, n):
    """Gradients spanning magnitudes from step to step, with fixed special entries: [0] always 0
    (the update is the decay alone), [1] 1e-20 (its square is subnormal in f32), [2] always 1e3."""
    scales = 10.0 ** torch.empty(steps).uniform_(-4, 1, generator=gen)
    g = randn(steps, n) * scales[:, None]
    g[:, 0] = 0.0
    if n > 2:
        g[:, 1] = 1e-20
        g[:, 2] = 1e3
    return g


adamw_cases = {
    # name: (n, steps, [lr, beta1, beta2, eps, weight_decay], step0)
    # n: 37 = 32 (one pass of ATen's 2 x 16-float AVX512 loop) + a scalar tail of 5; 19 all scalar
    "defaults": (37, 12, [1e-3, 0.9, 0.999, 1e-8, 1e-2], 0),
    "lora_lr_no_decay": (200, 12, [1e-4, 0.9, 0.999, 1e-8, 0.0], 0),
    "big_lr_decay": (67, 10, [3e-2, 0.8, 0.99, 1e-6, 0.1], 0),
    # beta1 0.3: lerp weight 0.7 >= 0.5 takes ATen's other formula, end + (w - 1) * (end - start)
    "lerp_large_weight": (45, 10, [1e-3, 0.3, 0.6, 1e-8, 1e-2], 0),
    "scalar_tail_only": (19, 10, [2e-3, 0.9, 0.999, 1e-8, 1e-2], 0),
    # resumed at step 1000: bias corrections near 1, moments from a checkpoint
    "resumed": (40, 10, [5e-4, 0.9, 0.999, 1e-8, 1e-2], 1000),
}
reseed(1)
adamw = {}
for name, (n, steps, cfg, step0) in adamw_cases.items():
    param0 = randn(n) * 0.1
    grads = adamw_grads(steps, n)
    if step0 > 0:
        m0 = randn(n) * 0.01
        v0 = (randn(n) * 0.01) ** 2
    else:
        m0 = torch.zeros(n)
        v0 = torch.zeros(n)
    params, m, v = adamw_run(cfg, step0, param0, m0, v0, grads, exact=False)
    params_x, m_x, v_x = adamw_run(cfg, step0, param0, m0, v0, grads, exact=True)
    assert torch.equal(m, m_x) and torch.equal(v, v_x), "the moments never touch sqrt"
    differ = (params != params_x).sum().item()
    print(f"adamw.{name}: n {n}, {steps} steps; parameters differing between MKL and exact sqrt: {differ} "
          f"of {params.numel()}, max |diff| {(params - params_x).abs().max():.3g}")
    k = f"adamw.{name}"
    adamw.update({f"{k}.config": f64(cfg), f"{k}.step0": torch.tensor([step0], dtype=torch.int64),
                  f"{k}.param0": param0, f"{k}.exp_avg0": m0, f"{k}.exp_avg_sq0": v0, f"{k}.grads": grads,
                  f"{k}.params": params, f"{k}.params.exact": params_x, f"{k}.exp_avg": m, f"{k}.exp_avg_sq": v})
save(adamw, "optim/adamw.safetensors", __file__, SEED + 1, {"torch_optimizer": "torch.optim.AdamW(foreach=False, fused=False)"})


# ----------------------------------------------------------------------------
# GradScaler: torch.amp.GradScaler("cpu") around a do-nothing optimizer.

def scaler_run(init_scale, growth_factor, backoff_factor, growth_interval, grads, losses, sizes):
    """grads: (steps, sum(sizes)) scaled gradients, as backward of the scaled loss leaves them."""
    params = [torch.nn.Parameter(torch.zeros(s)) for s in sizes]
    opt = torch.optim.SGD(params, lr=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_factor=growth_factor,
                                  backoff_factor=backoff_factor, growth_interval=growth_interval)
    out = {"unscaled": [], "found_inf": [], "scaled_loss": [], "inv_scale": [], "scale": [], "tracker": []}
    for g, loss in zip(grads, losses):
        out["scaled_loss"].append(scaler.scale(loss.reshape(())).reshape(1))  # lazily creates _scale
        out["inv_scale"].append(scaler._scale.double().reciprocal().float().reshape(1))
        for p, gp in zip(params, torch.split(g, sizes)):
            p.grad = gp.clone()
        scaler.unscale_(opt)
        found = sum(v.item() for v in scaler._per_optimizer_states[id(opt)]["found_inf_per_device"].values())
        out["found_inf"].append(float(found > 0))
        out["unscaled"].append(torch.cat([p.grad for p in params]))
        scaler.step(opt)
        scaler.update()
        out["scale"].append(scaler._scale.clone().reshape(1))
        out["tracker"].append(int(scaler._growth_tracker.item()))
    return {"unscaled": torch.stack(out["unscaled"]), "found_inf": torch.tensor(out["found_inf"]),
            "scaled_loss": torch.cat(out["scaled_loss"]), "inv_scale": torch.cat(out["inv_scale"]),
            "scale": torch.cat(out["scale"]), "tracker": torch.tensor(out["tracker"], dtype=torch.int32)}


scaler_cases = {
    # name: (init_scale, growth_factor, backoff_factor, growth_interval, steps, {step: planted value})
    # interval 3: grows at steps 2, 5 (tracker 3), backs off at 6 (inf) and 9 (NaN), -inf at 10
    "defaults_interval3": (65536.0, 2.0, 0.5, 3, 12, {6: float("inf"), 9: float("nan"), 10: float("-inf")}),
    # a scale that is not a power of two: inv_scale and the unscaled grads round
    "odd_factors": (1000.0, 1.5, 0.3, 2, 9, {4: float("inf")}),
    # growth past the f32 range is refused (the scale stays, the tracker resets)
    "overflow": (2.0 ** 127, 2.0, 0.5, 1, 3, {}),
}
scaler_sizes = [30, 13]  # two tensors; optim.c sees them back to back
reseed(2)
scaler_golden = {}
for name, (init, gf, bf, gi, steps, planted) in scaler_cases.items():
    n = sum(scaler_sizes)
    grads = randn(steps, n) * 1e3
    for step, value in planted.items():
        grads[step, 5 + step] = value  # in the first tensor at some steps, the second at others
    losses = randn(steps).abs()
    out = scaler_run(init, gf, bf, gi, grads, losses, scaler_sizes)
    print(f"scaler.{name}: scale {out['scale'].tolist()}, tracker {out['tracker'].tolist()}, "
          f"found_inf {out['found_inf'].tolist()}")
    k = f"scaler.{name}"
    scaler_golden[f"{k}.config"] = f64([init, gf, bf, gi])
    scaler_golden[f"{k}.sizes"] = torch.tensor(scaler_sizes, dtype=torch.int64)
    scaler_golden[f"{k}.grads"] = grads
    scaler_golden[f"{k}.loss"] = losses
    for key, value in out.items():
        scaler_golden[f"{k}.{key}"] = value
save(scaler_golden, "optim/scaler.safetensors", __file__, SEED + 2)


# ----------------------------------------------------------------------------
# clip_grad_norm_

def clip_run(sizes, max_norm, flat, exact):
    params = [torch.nn.Parameter(torch.zeros(s)) for s in sizes]
    for p, g in zip(params, torch.split(flat, sizes)):
        p.grad = g.clone()
    if exact:
        with ExactMath():
            total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return torch.cat([p.grad for p in params]), total.reshape(1)


clip_cases = {
    # name: (sizes, max_norm, gradient scale, {index: planted value})
    "above": ([5, 64, 33, 1, 200], 1.0, 1.0, {}),       # total ~17: clipped
    "below": ([5, 64, 33, 1, 200], 1.0, 0.01, {}),      # total ~0.17: coef clamped to 1
    "max_norm_half": ([17, 3, 100], 0.5, 0.2, {}),
    "big": ([1500, 500, 7], 1.0, 0.05, {}),             # long f32 sums in torch
    "one_tensor": ([500], 2.0, 1.0, {}),
    "inf": ([20, 30], 1.0, 1.0, {7: float("inf")}),     # total inf: grads 0, the inf NaN
    "nan": ([20, 30], 1.0, 1.0, {25: float("nan")}),    # total NaN: all NaN
}
# more small cases: torch's f32 norms differ from the double ones in about a third of tensors
for i in range(8):
    clip_cases[f"small{i}"] = ([3 + 7 * i, 40 - 4 * i, 11], 1.0, 0.05 * (i + 1), {})
reseed(3)
clip_golden = {}
for name, (sizes, max_norm, gscale, planted) in clip_cases.items():
    flat = randn(sum(sizes)) * gscale
    for i, value in planted.items():
        flat[i] = value
    out, total = clip_run(sizes, max_norm, flat, exact=False)
    out_x, total_x = clip_run(sizes, max_norm, flat, exact=True)
    print(f"clip.{name}: total {total.item():.9g}, exact {total_x.item():.9g}")
    k = f"clip.{name}"
    clip_golden.update({f"{k}.sizes": torch.tensor(sizes, dtype=torch.int64), f"{k}.max_norm": f64([max_norm]),
                        f"{k}.grads": flat, f"{k}.out": out, f"{k}.total": total, f"{k}.out.exact": out_x,
                        f"{k}.total.exact": total_x})
save(clip_golden, "optim/clip.safetensors", __file__, SEED + 3)


# ----------------------------------------------------------------------------
# Learning-rate schedules: the lr each optimizer update uses (param_groups[0]["lr"] before the
# scheduler steps past it), as a training loop calls optimizer.step(); lr_scheduler.step().

def lr_run(name, warmup, total, steps=30):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=LR_BASE)
    sched = get_scheduler(name, optimizer=opt, num_warmup_steps=warmup, num_training_steps=total)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()  # no grad: changes nothing, but keeps LRScheduler from warning about the order
        sched.step()
    return f64(lrs)


lr_golden = {"lr.base_lr": f64([LR_BASE])}
for name in LR_SCHEDULES:
    for warmup, total in [(5, 25), (0, 30), (5, 30), (1, 7)]:
        lr_golden[f"lr.{name}.w{warmup}.t{total}"] = lr_run(name, warmup, total)
save(lr_golden, "optim/lr.safetensors", __file__, SEED)


# ----------------------------------------------------------------------------
# The trainer's step, as accelerate runs it with mixed_precision="fp16" (on a GPU; accelerate
# makes no GradScaler on the CPU, so its calls are written out here):
#   Accelerator.backward:          scaler.scale(loss).backward()
#   Accelerator.clip_grad_norm_:   scaler.unscale_(optimizer); clip_grad_norm_(params, 1.0)
#   AcceleratedOptimizer.step:     scaler.step(optimizer); scaler.update()
#   AcceleratedScheduler.step:     lr_scheduler.step() unless the optimizer step was skipped
# The model is loss = sum_i (p_i * c_i).sum(), so backward leaves grad_i = scale * c_i (an exact
# product when the scale is a power of two); c at TRAINER_INF_STEP holds an inf.

TRAINER_SIZES = [24, 40, 9]
TRAINER_STEPS = 8
TRAINER_INF_STEP = 3
TRAINER_CFG = dict(lr=1e-3, warmup=2, total=8, schedule="cosine", growth_interval=3, max_norm=1.0)


def trainer_run(param0, cs, exact):
    params = [torch.nn.Parameter(p.clone()) for p in torch.split(param0, TRAINER_SIZES)]
    opt = torch.optim.AdamW(params, lr=TRAINER_CFG["lr"], foreach=False, fused=False)
    sched = get_scheduler(TRAINER_CFG["schedule"], optimizer=opt, num_warmup_steps=TRAINER_CFG["warmup"],
                          num_training_steps=TRAINER_CFG["total"])
    scaler = torch.amp.GradScaler("cpu", growth_interval=TRAINER_CFG["growth_interval"])
    rec = {k: [] for k in ("loss_scale", "found_inf", "norm", "lr", "params", "scale", "tracker")}
    for c in cs:
        opt.zero_grad()
        loss = sum((p * ci).sum() for p, ci in zip(params, torch.split(c, TRAINER_SIZES)))
        rec["loss_scale"].append(scaler.get_scale())
        scaler.scale(loss).backward()
        grads = torch.cat([p.grad for p in params])
        assert torch.equal(grads, c * rec["loss_scale"][-1]), "backward gives scale * c"
        scaler.unscale_(opt)
        if exact:
            with ExactMath():
                norm = torch.nn.utils.clip_grad_norm_(params, TRAINER_CFG["max_norm"])
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, TRAINER_CFG["max_norm"])
        found = sum(v.item() for v in scaler._per_optimizer_states[id(opt)]["found_inf_per_device"].values()) > 0
        rec["lr"].append(opt.param_groups[0]["lr"])
        if exact:
            with ExactMath():
                scaler.step(opt)
        else:
            scaler.step(opt)
        scaler.update()
        if not found:
            sched.step()
        rec["found_inf"].append(float(found))
        rec["norm"].append(norm.reshape(1))
        rec["params"].append(torch.cat([p.detach().clone() for p in params]))
        rec["scale"].append(scaler.get_scale())
        rec["tracker"].append(int(scaler._growth_tracker.item()))
    return {"loss_scale": torch.tensor(rec["loss_scale"], dtype=torch.float32),
            "found_inf": torch.tensor(rec["found_inf"]), "norm": torch.cat(rec["norm"]), "lr": f64(rec["lr"]),
            "params": torch.stack(rec["params"]), "scale": torch.tensor(rec["scale"], dtype=torch.float32),
            "tracker": torch.tensor(rec["tracker"], dtype=torch.int32)}


reseed(5)
n = sum(TRAINER_SIZES)
param0 = randn(n) * 0.1
step_scales = torch.tensor([0.3, 0.05, 0.2, 0.1, 0.02, 0.4, 0.08, 0.15])  # totals ~0.2..3: some clipped
cs = randn(TRAINER_STEPS, n) * step_scales[:, None]
cs[TRAINER_INF_STEP, 50] = float("inf")
plain = trainer_run(param0, cs, exact=False)
exact = trainer_run(param0, cs, exact=True)
print(f"trainer: found_inf {plain['found_inf'].tolist()}, scale {plain['scale'].tolist()}, "
      f"norms {plain['norm'].tolist()}, lr {plain['lr'].tolist()}")
print(f"trainer: max |params plain - exact| {(plain['params'] - exact['params']).abs().max():.3g}")
trainer_golden = {"trainer.sizes": torch.tensor(TRAINER_SIZES, dtype=torch.int64), "trainer.param0": param0,
                  "trainer.c": cs,
                  "trainer.config": f64([TRAINER_CFG["lr"], TRAINER_CFG["warmup"], TRAINER_CFG["total"],
                                         TRAINER_CFG["growth_interval"], TRAINER_CFG["max_norm"]])}
for key, value in plain.items():
    trainer_golden[f"trainer.{key}"] = value
for key in ("norm", "params"):
    trainer_golden[f"trainer.{key}.exact"] = exact[key]
assert torch.equal(plain["found_inf"], exact["found_inf"]) and torch.equal(plain["scale"], exact["scale"])
save(trainer_golden, "optim/trainer.safetensors", __file__, SEED + 5,
     {"trainer": "AdamW defaults + cosine schedule (warmup 2, total 8) + GradScaler(growth_interval=3) + clip 1.0"})
print("torch", torch.__version__, "diffusers", diffusers.__version__)
