"""Benchmark: exact bits/dim against the fast estimator on a small trained model, and the batched engine (as
`DDPMPlusPipeline.log_likelihood` runs it) against the simple one-call-per-timestep loop (the structure of
improved-diffusion's `calc_bpd_loop`), measured in the same run.

    python bench/likelihood.py [--model DIR] [--num-images 297] [--evaluations 100] [--train-steps 600]

Without `--model`, a small UNet (8x8 grey digits, T = 1000 linear, ε-prediction, fixed_small variances) is trained
on the embedded digits with `scheduler.training_losses` in a plain loop and cached in bench/results/ (git-ignored),
so reruns skip the training. Prints:

* the exact data-set mean bits/dim over all T timesteps, and the estimates of that same value (`estimate_bound`
  with the same noise: pilot, schedule and uniform timestep proposals) with their 95% intervals, the difference,
  the network evaluations of each and the wall-time ratio;
* the wall-time ratio of the simple loop to `variational_bound` on the same images;
* the size of improved-diffusion's tanh approximation of the decoder: per dimension for typical decoder scales,
  and on this model's decoder term.

Results are also written to bench/results/likelihood.json.

With `--ode-model DIR` (the README's digits model, `runs/digits`), it compares instead, over its held-out digits,
the probability-flow ODE's bits/dim (`ode_likelihood`) with the exact variational bound, each one's network
evaluations and wall time; measures `pipe.encode` / `pipe.decode` reconstruction; and runs the ODE of a few images
with scipy's RK45 (what `ode_likelihood` uses) and torchdiffeq's dopri5 (when installed: `pip install torchdiffeq`)
on the same points and probes. Results go to bench/results/ode-likelihood.json, the figure to `--figure`.

    python bench/likelihood.py --ode-model runs/digits [--num-images 297] [--figure docs/images/ode-digits.png]
"""

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path

import torch
from diffusers import UNet2DModel

from ddpm_plus.bound_estimation import estimate_bound, pilot_profile, pilot_timesteps
from ddpm_plus.cli_bpd import image_generators, load_images, load_model
from ddpm_plus.data import load_image_dataset
from ddpm_plus.likelihood import Network, eval_mode, variational_bound
from ddpm_plus.models import unet_config
from ddpm_plus.pipeline_ddpm_plus import DDPMPlusPipeline
from ddpm_plus.plots import save_ode_figure
from ddpm_plus.probability_flow import FlowModel, check_flow_model, drift_and_divergence, ode_likelihood, solve_flow
from ddpm_plus.scheduling_ddpm_plus import DDPMPlusScheduler, discretized_gaussian_log_likelihood

RESULTS = Path(__file__).parent / "results"
RESOLUTION = 8
# The digits-16 conventions at 8x8 with two narrow levels (attention only in the 4x4 middle block): 163,985
# parameters, trained in a few minutes on 2 CPU cores.
MODEL_OVERRIDES = {
    "sample_size": RESOLUTION,
    "block_out_channels": (16, 32),
    "down_block_types": ("DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=RESULTS / "likelihood-digits8", help="saved (or cached) model")
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--num-images", type=int, default=297, help="test images (the digits test split has 297)")
    parser.add_argument("--evaluations", type=int, default=100, help="network evaluations per image, estimator")
    parser.add_argument("--pilot-images", type=int, default=8)
    parser.add_argument("--pilot-timesteps", type=int, default=32)
    parser.add_argument("--baseline-images", type=int, default=8, help="images for the engine vs simple loop timing")
    parser.add_argument("--max-batch-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ode-model", type=Path, default=None, help="compare the ODE with the bound on this model")
    parser.add_argument("--ode-draws", type=int, default=2, help="dequantization draws per image (ODE)")
    parser.add_argument("--ode-batch-size", type=int, default=64, help="(image, draw) rows per ODE solve")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="rtol = atol of the ODE solver")
    parser.add_argument("--solver-images", type=int, default=8, help="images of the scipy/torchdiffeq comparison")
    parser.add_argument("--figure", type=Path, default=None, help="write the ODE figure (with the bound) here")
    return parser.parse_args()


def digits(split: str) -> torch.Tensor:
    dataset = load_image_dataset("digits", resolution=RESOLUTION, num_channels=1, split=split)
    return torch.stack([dataset[index] for index in range(len(dataset))])


def train(args: argparse.Namespace) -> tuple[UNet2DModel, DDPMPlusScheduler]:
    """A plain loop: t ~ U{0..T-1}, x_t = q_sample, L_simple from `training_losses`, AdamW with cosine decay."""
    torch.manual_seed(args.seed)
    unet = UNet2DModel.from_config(unet_config("digits-16", **MODEL_OVERRIDES))
    scheduler = DDPMPlusScheduler(num_train_timesteps=1000)
    images = digits("train")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.train_steps)
    generator = torch.Generator().manual_seed(args.seed)
    start, running = time.perf_counter(), 0.0
    unet.train()
    for step in range(1, args.train_steps + 1):
        x0 = images[torch.randint(len(images), (args.train_batch,), generator=generator)]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(scheduler.config.num_train_timesteps, (len(x0),), generator=generator)
        x_t = scheduler.q_sample(x0, noise, t)
        loss = scheduler.training_losses(unet(x_t, t).sample, x0, noise, t, x_t=x_t)["loss"].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running += loss.item()
        if step % 100 == 0:
            print(f"  step {step}: loss {running / 100:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
            running = 0.0
    unet.eval()
    unet.save_pretrained(args.model / "unet")
    scheduler.save_pretrained(args.model / "scheduler")
    info = {"train_steps": args.train_steps, "seconds": time.perf_counter() - start, "seed": args.seed}
    (args.model / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return unet, scheduler


def load_or_train(args: argparse.Namespace) -> tuple[UNet2DModel, DDPMPlusScheduler]:
    if (args.model / "unet").is_dir():
        print(f"model: {args.model}")
        unet = UNet2DModel.from_pretrained(args.model, subfolder="unet", torch_dtype=torch.float32).eval()
        return unet, DDPMPlusScheduler.from_pretrained(args.model, subfolder="scheduler")
    print(f"training the benchmark model into {args.model} ({args.train_steps} steps)")
    return train(args)


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def exact_vs_estimate(unet, scheduler, images, args) -> dict:
    count = len(images)
    exact, exact_seconds = timed(
        lambda: variational_bound(
            unet,
            images,
            scheduler,
            generator=image_generators(args.seed, range(count)),
            max_batch_size=args.max_batch_size,
        )
    )

    def estimate(proposal: str):
        profile = {"schedule": None, "uniform": torch.ones(scheduler.config.num_train_timesteps)}.get(proposal)
        if proposal == "pilot":
            profile = pilot_profile(
                unet,
                images[: args.pilot_images],
                scheduler,
                num_timesteps=args.pilot_timesteps,
                generator=torch.Generator().manual_seed(args.seed + 1),
                max_batch_size=args.max_batch_size,
            )
        return estimate_bound(  # the same per-image generators as the exact run: the same noise
            unet,
            images,
            scheduler,
            num_strata=(args.evaluations - 1) // 2,
            samples_per_stratum=2,
            profile=profile,
            generator=image_generators(args.seed, range(count)),
            max_batch_size=args.max_batch_size,
        )

    pilot_evaluations = args.pilot_images * len(pilot_timesteps(1000, args.pilot_timesteps))
    report = {
        "num_images": count,
        "exact": {
            "mean_bpd": exact.total_bpd.mean().item(),
            "mean_prior_bpd": exact.prior_bpd.mean().item(),
            "mean_decoder_bpd": exact.decoder_bpd.mean().item(),
            "evaluations": exact.num_evaluations,
            "seconds": exact_seconds,
        },
    }
    for proposal in ("pilot", "schedule", "uniform"):
        result, seconds = timed(lambda proposal=proposal: estimate(proposal))
        low, high = result.mean_interval(0.95)
        evaluations = result.num_evaluations + (pilot_evaluations if proposal == "pilot" else 0)
        report[f"estimate_{proposal}_profile"] = {
            "mean_bpd": result.mean_bpd,
            "standard_error": result.mean_standard_error,
            "ci95": [low, high],
            "difference_to_exact": result.mean_bpd - report["exact"]["mean_bpd"],
            "evaluations": evaluations,
            "evaluation_fraction": evaluations / exact.num_evaluations,
            "seconds": seconds,
            "speedup": exact_seconds / seconds,
            "exact_within_ci": low <= report["exact"]["mean_bpd"] <= high,
        }
    return report


@torch.no_grad()
def simple_loop_bound(unet, scheduler, images, generator) -> torch.Tensor:
    """The exact bound with one network call per timestep for the whole batch, from t = T-1 down to 0: the structure
    of improved-diffusion's `calc_bpd_loop`, with the scheduler's terms (the baseline of the engine's batching)."""
    x0 = images.double()
    terms = torch.zeros(len(x0), scheduler.config.num_train_timesteps, dtype=torch.float64)
    for t in reversed(range(scheduler.config.num_train_timesteps)):
        x_t = scheduler.q_sample(x0, torch.randn(x0.shape, generator=generator, dtype=torch.float64), t)
        output = unet(x_t.float(), torch.full((len(x0),), t)).sample.double()
        terms[:, t] = scheduler.vb_terms_bpd(output, x0, x_t, t)
    return scheduler.prior_bpd(x0) + terms.sum(1)


def engine_vs_simple_loop(unet, scheduler, images, args) -> dict:
    """The exact bound with one network call per timestep vs batched (image, t) pairs (`variational_bound`, which
    `DDPMPlusPipeline.log_likelihood` calls). The two draw their noise differently, so their totals agree only up
    to the noise of one draw per timestep."""
    count = len(images)
    loop, loop_seconds = timed(
        lambda: simple_loop_bound(unet, scheduler, images, torch.Generator().manual_seed(args.seed))
    )
    pipe = DDPMPlusPipeline(unet, scheduler)
    pipe.set_progress_bar_config(disable=True)
    engine, engine_seconds = timed(
        lambda: pipe.log_likelihood(
            images, generator=image_generators(args.seed, range(count)), max_batch_size=args.max_batch_size
        )
    )
    return {
        "num_images": count,
        "simple_loop_seconds": loop_seconds,
        "engine_seconds": engine_seconds,
        "speedup": loop_seconds / engine_seconds,
        "simple_loop_mean_bpd": loop.mean().item(),
        "engine_mean_bpd": engine.bits_per_dim.mean().item(),
    }


def tanh_decoder_nll(x0: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """improved-diffusion's decoder NLL, for comparison only: tanh approximation of Φ and a 1e-12 floor."""

    def approx_cdf(x):
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))

    inv_std = torch.exp(-log_scale)
    cdf_plus = approx_cdf(inv_std * (x0 - mean + 1 / 255))
    cdf_min = approx_cdf(inv_std * (x0 - mean - 1 / 255))
    interior = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    lower_edge, upper_edge = cdf_plus.clamp(min=1e-12).log(), (1 - cdf_min).clamp(min=1e-12).log()
    return -torch.where(x0 < -0.999, lower_edge, torch.where(x0 > 0.999, upper_edge, interior))


def tanh_difference_table(scheduler: DDPMPlusScheduler) -> list[dict]:
    """Largest |tanh - exact| decoder NLL in bits per dimension over all 256 levels, per σ_1 and mean error."""
    x0 = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    rows = []
    sigmas = {
        "sqrt(beta_tilde) (fixed_small at t=1)": math.exp(0.5 * scheduler.posterior_log_variance_clipped_f64[0]),
        "sqrt(beta_1)": math.sqrt(scheduler.betas_f64[0]),
    }
    for name, sigma in sigmas.items():
        log_scale = torch.tensor(math.log(sigma), dtype=torch.float64)
        for bins in (0.0, 0.5, 1.0, 2.0, 3.0, 4.0):
            mean = x0 + bins * 2 / 255
            exact = -discretized_gaussian_log_likelihood(x0, mean, log_scale)
            difference = (tanh_decoder_nll(x0, mean, log_scale) - exact) / math.log(2)
            rows.append(
                {
                    "sigma": name,
                    "sigma_in_bins": sigma / (2 / 255),
                    "mean_error_bins": bins,
                    "exact_bits": exact[1:-1].mean().item() / math.log(2),
                    "max_abs_difference_bits": difference.abs().max().item(),
                }
            )
    return rows


def tanh_difference_on_model(unet, scheduler, images, args) -> dict:
    """Decoder term L_0 of the trained model on the test images, exact and with the tanh approximation."""
    generator = torch.Generator().manual_seed(args.seed + 3)
    x0 = images.double()
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    t = torch.zeros(len(x0), dtype=torch.long)
    x_1 = scheduler.q_sample(x0, noise, t)
    with torch.no_grad():
        output = unet(x_1.float(), t).sample.double()
    moments = scheduler.p_mean_variance(output, x_1, t)
    log_scale = 0.5 * moments.log_variance
    exact = -discretized_gaussian_log_likelihood(x0, moments.mean, log_scale).flatten(1).mean(1) / math.log(2)
    approximate = tanh_decoder_nll(x0, moments.mean, log_scale).flatten(1).mean(1) / math.log(2)
    return {
        "exact_decoder_bpd": exact.mean().item(),
        "tanh_decoder_bpd": approximate.mean().item(),
        "mean_difference_bpd": (approximate - exact).mean().item(),
        "max_image_difference_bpd": (approximate - exact).abs().max().item(),
    }


# ---------------------------------------------------------------------------------------------------------------
# The probability-flow ODE beside the bound (--ode-model)
# ---------------------------------------------------------------------------------------------------------------


def ode_vs_bound(unet, scheduler, images, args) -> dict:
    """The exact bound and the ODE's bits/dim of the same images (the bound's noise and the ODE's dequantization
    and probes keyed from the same per-image generators)."""
    count = len(images)
    exact, exact_seconds = timed(
        lambda: variational_bound(
            unet, images, scheduler, generator=image_generators(args.seed, range(count)),
            max_batch_size=args.max_batch_size,
        )
    )  # fmt: skip
    ode, ode_seconds = timed(
        lambda: ode_likelihood(
            unet, images, scheduler, num_draws=args.ode_draws, rtol=args.tolerance, atol=args.tolerance,
            generator=image_generators(args.seed, range(count)), max_batch_size=args.ode_batch_size,
        )
    )  # fmt: skip
    if args.figure is not None:
        save_ode_figure(ode, args.figure, bound=exact, model_name=args.ode_model.resolve().name)
    return {
        "num_images": count,
        "exact_bound": {
            "mean_bpd": exact.total_bpd.mean().item(),
            "standard_error_over_images": (exact.total_bpd.std() / math.sqrt(count)).item(),
            "evaluations": exact.num_evaluations,
            "seconds": exact_seconds,
        },
        "ode": {
            "mean_bpd": ode.mean_bpd,
            "standard_error_over_images": ode.standard_error_over_images,
            "standard_error_over_draws": ode.standard_error_over_draws,
            "draws": args.ode_draws,
            "tolerance": args.tolerance,
            "evaluations": ode.num_evaluations,
            "function_evaluations_per_solve": sorted(set(ode.function_evaluations.tolist())),
            "seconds": ode_seconds,
        },
        "paired_difference": {
            "mean_bpd": (ode.bits_per_dim - exact.total_bpd).mean().item(),
            "standard_error": ((ode.bits_per_dim - exact.total_bpd).std() / math.sqrt(count)).item(),
        },
    }


def reconstruction(unet, scheduler, images, steps: tuple[int, ...]) -> list[dict]:
    """decode(encode(x)) - x on the [-1, 1] scale, per number of DDIM steps."""
    pipe = DDPMPlusPipeline(unet, scheduler)
    rows = []
    for count in steps:
        (noise, seconds) = timed(lambda count=count: pipe.encode(images, num_inference_steps=count))
        error = pipe.decode(noise, num_inference_steps=count) - images.double()
        rows.append(
            {
                "steps": count,
                "max_abs_error": error.abs().max().item(),
                "rms_error": error.square().mean().sqrt().item(),
                "max_abs_error_in_levels": error.abs().max().item() * 127.5,
                "encode_seconds": seconds,
                "noise_std": noise.std().item(),
            }
        )
    return rows


def torchdiffeq_log_density(flow: FlowModel, x: torch.Tensor, probes: torch.Tensor, tolerance: float):
    """log p_0(x) by torchdiffeq's dopri5 (the same tableau and error norm as scipy's RK45) on the same ODE.

    dopri5 steps past the end of the interval and interpolates back, so it evaluates f beyond s = T-1, where the
    schedule has no value: s is clamped to T-1 there (scipy's solve_ivp never leaves the interval)."""
    from torchdiffeq import odeint  # not a dependency of ddpm_plus: pip install torchdiffeq

    rows, evaluations = x.shape[0], 0

    def derivative(s: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        time = min(s.item(), flow.schedule.end)
        drift, divergence = drift_and_divergence(flow, state[:-rows].reshape(x.shape), time, probes)
        return torch.cat([drift.flatten(), divergence])

    start = torch.cat([x.flatten(), torch.zeros(rows, dtype=torch.float64)])
    span = torch.tensor([0.0, flow.schedule.end], dtype=torch.float64)
    end = odeint(derivative, start, span, rtol=tolerance, atol=tolerance, method="dopri5")[-1]
    noise = end[:-rows].reshape(rows, -1)
    prior = -0.5 * (noise.square().sum(1) + noise.shape[1] * math.log(2 * math.pi))
    return prior + end[-rows:], evaluations


def solver_comparison(unet, scheduler, images, args, repeats: int = 3) -> dict:
    """scipy's RK45 and torchdiffeq's dopri5 on the same dequantized images and Rademacher probes; each solver runs
    `repeats` times, alternating, and the shortest wall time counts (the machine's load varies)."""
    generator = torch.Generator().manual_seed(args.seed)
    x = images.double() + (torch.rand(images.shape, generator=generator, dtype=torch.float64) - 0.5) * 2 / 255
    probes = torch.randint(0, 2, (1, *x.shape), generator=generator).double() * 2 - 1
    network = Network(unet, torch.float32, torch.device("cpu"), unet.config.in_channels)
    flow = FlowModel(network, check_flow_model(unet, scheduler), scheduler.config.prediction_type)
    solvers = {"scipy_rk45": lambda: solve_flow(flow, x, probes, args.tolerance, args.tolerance)}
    if importlib.util.find_spec("torchdiffeq") is not None:
        import torchdiffeq  # before the clock starts

        solvers["torchdiffeq_dopri5"] = lambda: torchdiffeq_log_density(flow, x, probes, args.tolerance)
    runs = {name: [] for name in solvers}
    with eval_mode(network):
        for _ in range(repeats):
            for name, solve in solvers.items():
                runs[name].append(timed(solve))
    dimensions = x[0].numel() * math.log(2)
    scipy_solution = runs["scipy_rk45"][0][0]
    results = {"scipy_rk45": (scipy_solution.log_density, scipy_solution.num_function_evaluations)}
    if "torchdiffeq_dopri5" in runs:
        results["torchdiffeq_dopri5"] = runs["torchdiffeq_dopri5"][0][0]
    report = {"num_images": len(x), "tolerance": args.tolerance, "repeats": repeats}
    for name, (log_density, evaluations) in results.items():
        report[name] = {
            "mean_bpd": (-log_density / dimensions).mean().item() + math.log2(127.5),
            "function_evaluations": evaluations,
            "seconds": min(seconds for _, seconds in runs[name]),
            "max_image_difference_to_scipy_bpd": (
                ((log_density - scipy_solution.log_density) / dimensions).abs().max().item()
            ),
        }
    if "torchdiffeq_dopri5" in report:
        report["torchdiffeq_dopri5"]["version"] = torchdiffeq.__version__
    return report


def ode_main(args: argparse.Namespace) -> None:
    total_start = time.perf_counter()
    unet, scheduler = load_model(str(args.ode_model), torch.device("cpu"))
    images = load_images("digits", "test", unet.config, args.num_images)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(images)} test digits {images.shape[1:]}")
    comparison = ode_vs_bound(unet, scheduler, images, args)
    for name in ("exact_bound", "ode"):
        row = comparison[name]
        print(
            f"{name:12s} {row['mean_bpd']:.4f} bits/dim (± {row['standard_error_over_images']:.4f} standard error "
            f"over images), {row['evaluations']} network evaluations, {row['seconds']:.1f} s"
        )
    paired = comparison["paired_difference"]
    print(f"ODE - bound, paired over images: {paired['mean_bpd']:+.4f} ± {paired['standard_error']:.4f}")
    steps = sorted({min(count, scheduler.config.num_train_timesteps) for count in (50, 200, 1000)})
    rows = reconstruction(unet, scheduler, images[: args.solver_images], steps)
    for row in rows:
        error = row["max_abs_error_in_levels"]
        print(f"decode(encode(x)) with {row['steps']} DDIM steps: max |error| {error:.3f} levels")
    solvers = solver_comparison(unet, scheduler, images[: args.solver_images], args)
    for name in ("scipy_rk45", "torchdiffeq_dopri5"):
        if name in solvers:
            row = solvers[name]
            print(f"{name:20s} {row['mean_bpd']:.5f} bits/dim, {row['function_evaluations']} evaluations of f, "
                  f"{row['seconds']:.1f} s")  # fmt: skip
    report = {
        "ode_vs_bound": comparison,
        "reconstruction": rows,
        "solvers": solvers,
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "threads": torch.get_num_threads(),
        "total_seconds": time.perf_counter() - total_start,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ode-likelihood.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"total {report['total_seconds']:.0f} s; wrote {RESULTS / 'ode-likelihood.json'}")


def main() -> None:
    args = parse_args()
    if args.ode_model is not None:
        ode_main(args)
        return
    if args.evaluations < 4:
        raise SystemExit("--evaluations must be at least 4 (two draws for the decoder and for one KL stratum)")
    total_start = time.perf_counter()
    unet, scheduler = load_or_train(args)
    images = digits("test")[: args.num_images]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(images)} test images 1x8x8, T=1000")

    comparison = exact_vs_estimate(unet, scheduler, images, args)
    exact = comparison["exact"]
    print(
        f"exact     {exact['mean_bpd']:.4f} bits/dim (prior {exact['mean_prior_bpd']:.1e}, decoder "
        f"{exact['mean_decoder_bpd']:.4f}), {exact['evaluations']} evaluations, {exact['seconds']:.1f} s"
    )
    for name in ("estimate_pilot_profile", "estimate_schedule_profile", "estimate_uniform_profile"):
        row = comparison[name]
        low, high = row["ci95"]
        print(
            f"{name:26s} {row['mean_bpd']:.4f} ± {(high - low) / 2:.4f} (95% CI), difference "
            f"{row['difference_to_exact']:+.4f}, {row['evaluations']} evaluations "
            f"({100 * row['evaluation_fraction']:.1f}%), {row['seconds']:.1f} s, wall-time ratio exact/estimate "
            f"{row['speedup']:.1f}x"
        )

    baseline = engine_vs_simple_loop(unet, scheduler, images[: args.baseline_images], args)
    print(
        f"exact bound on {baseline['num_images']} images: simple loop {baseline['simple_loop_seconds']:.1f} s, "
        f"engine {baseline['engine_seconds']:.1f} s, ratio {baseline['speedup']:.1f}x (mean bits/dim "
        f"{baseline['simple_loop_mean_bpd']:.3f} and {baseline['engine_mean_bpd']:.3f}, different noise draws)"
    )

    table = tanh_difference_table(scheduler)
    print("tanh-approximated decoder vs exact, largest |difference| per dimension over the 256 levels:")
    for row in table:
        print(
            f"  σ = {row['sigma']:38s} ({row['sigma_in_bins']:.2f} bins), mean error {row['mean_error_bins']:.1f} "
            f"bins: {row['max_abs_difference_bits']:.2e} bits (exact NLL {row['exact_bits']:.3f} bits)"
        )
    on_model = tanh_difference_on_model(unet, scheduler, images, args)
    print(
        f"  this model's decoder term: exact {on_model['exact_decoder_bpd']:.5f}, "
        f"tanh {on_model['tanh_decoder_bpd']:.5f} bits/dim, mean difference {on_model['mean_difference_bpd']:+.2e}"
    )

    report = {
        "exact_vs_estimate": comparison,
        "engine_vs_simple_loop": baseline,
        "tanh_table": table,
        "tanh_on_model": on_model,
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "threads": torch.get_num_threads(),
        "total_seconds": time.perf_counter() - total_start,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "likelihood.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"total {report['total_seconds']:.0f} s; wrote {RESULTS / 'likelihood.json'}")


if __name__ == "__main__":
    main()
