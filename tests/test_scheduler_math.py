"""The DDPM math of DDPMPlusScheduler against independent float64 references written here from docs/math.md."""

import math

import mpmath
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from ddpm_plus import DDPMPlusScheduler
from ddpm_plus.scheduling_ddpm_plus import discretized_gaussian_log_likelihood

TOL = 1e-10
T_IDX = np.array([0, 1, 7, 500, 999])
SHAPE = (5, 2, 3, 3)
LN2 = math.log(2.0)


class Reference:
    """The forward process and posterior of docs/math.md in numpy float64 (0-based t; ᾱ_{-1} = 1)."""

    def __init__(self, betas: np.ndarray):
        self.betas = betas
        self.alphas = 1.0 - betas
        self.abar = np.cumprod(self.alphas)
        self.abar_prev = np.append(1.0, self.abar[:-1])
        self.post_var = betas * (1.0 - self.abar_prev) / (1.0 - self.abar)
        self.post_logvar = np.log(np.append(self.post_var[1], self.post_var[1:]))
        self.c_x0 = np.sqrt(self.abar_prev) * betas / (1.0 - self.abar)
        self.c_xt = np.sqrt(self.alphas) * (1.0 - self.abar_prev) / (1.0 - self.abar)

    def col(self, table, t):
        return table[t].reshape(-1, 1, 1, 1)

    def x0_from(self, kind, out, xt, t):
        ab = self.col(self.abar, t)
        if kind == "epsilon":
            return (xt - np.sqrt(1 - ab) * out) / np.sqrt(ab)
        if kind == "sample":
            return out
        if kind == "v_prediction":
            return np.sqrt(ab) * xt - np.sqrt(1 - ab) * out
        return (out - self.col(self.c_xt, t) * xt) / self.col(self.c_x0, t)

    def output_from(self, kind, x0, xt, t):
        ab = self.col(self.abar, t)
        eps = (xt - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
        return {
            "epsilon": eps,
            "sample": x0,
            "v_prediction": np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0,
            "mean": self.col(self.c_x0, t) * x0 + self.col(self.c_xt, t) * xt,
        }[kind]

    def model_logvar(self, variance_type, var_out, t):
        if variance_type == "fixed_small":
            return self.col(self.post_logvar, t) + 0 * var_out
        if variance_type == "fixed_large":
            return self.col(np.log(np.append(self.post_var[1], self.betas[1:])), t) + 0 * var_out
        if variance_type == "learned":
            return var_out
        frac = (var_out + 1) / 2
        return frac * self.col(np.log(self.betas), t) + (1 - frac) * self.col(self.post_logvar, t)


def gauss_kl(m1, lv1, m2, lv2):
    return 0.5 * (-1 + lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 / np.exp(lv2))


def mp_log_bin_mass(x, mean, sigma):
    """log P(bin of x) under N(mean, sigma²) with 50-digit arithmetic (edge bins open, eq. 13).

    Bins above the mean use the mirrored lower tail, P(a < X < b) = P(-b < -X < -a), so that no difference of two
    numbers close to 1 is ever formed.
    """
    mpmath.mp.dps = 50
    x, mean, sigma = mpmath.mpf(float(x)), mpmath.mpf(float(mean)), mpmath.mpf(float(sigma))
    half = mpmath.mpf(1) / 255
    lower = (x - half - mean) / sigma if x > -0.999 else -mpmath.inf
    upper = (x + half - mean) / sigma if x < 0.999 else mpmath.inf
    if lower + upper > 0:
        lower, upper = -upper, -lower
    return float(mpmath.log(mpmath.ncdf(upper) - mpmath.ncdf(lower)))


def ref_decoder_loglik(x0, mean, logvar):
    flat = [
        mp_log_bin_mass(x, m, math.exp(0.5 * lv))
        for x, m, lv in zip(x0.ravel(), mean.ravel(), logvar.ravel(), strict=True)
    ]
    return np.array(flat).reshape(x0.shape)


def linear_betas(T=1000, start=1e-4, end=0.02):
    return np.linspace(start, end, T, dtype=np.float64)


@pytest.fixture(scope="module")
def ref():
    return Reference(linear_betas())


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randint(0, 256, SHAPE, generator=g).double() / 127.5) - 1
    noise = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    out = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    var_out = torch.rand(SHAPE, generator=g, dtype=torch.float64) * 2 - 1
    return x0, noise, out, var_out


def T(a):
    return torch.from_numpy(np.asarray(a))


def close(actual: torch.Tensor, expected: np.ndarray, tol=TOL):
    np.testing.assert_allclose(actual.detach().numpy(), expected, rtol=tol, atol=tol)


def test_float64_tables(ref):
    s = DDPMPlusScheduler()
    close(s.betas_f64, ref.betas, 1e-15)
    close(s.alphas_cumprod_f64, ref.abar)
    close(s.posterior_variance_f64, ref.post_var)
    close(s.posterior_log_variance_clipped_f64, ref.post_logvar)


@pytest.mark.parametrize("schedule", ["squaredcos_cap_v2", "scaled_linear", "sigmoid"])
def test_float64_schedules(schedule):
    T_ = 1000
    if schedule == "squaredcos_cap_v2":
        f = lambda s: np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731  (docs/math.md, "Beta schedules")
        steps = np.arange(T_ + 1) / T_
        expected = np.minimum(1 - f(steps[1:]) / f(steps[:-1]), 0.999)
    elif schedule == "scaled_linear":
        expected = np.linspace(1e-4**0.5, 0.02**0.5, T_) ** 2
    else:
        expected = 1 / (1 + np.exp(-np.linspace(-6, 6, T_))) * (0.02 - 1e-4) + 1e-4
    close(DDPMPlusScheduler(beta_schedule=schedule).betas_f64, expected, 1e-13)
    # the float32 sampling table is diffusers' own
    assert torch.equal(DDPMPlusScheduler(beta_schedule=schedule).betas, DDPMScheduler(beta_schedule=schedule).betas)


def test_snr(ref):
    close(DDPMPlusScheduler().snr(T(T_IDX)), ref.abar[T_IDX] / (1 - ref.abar[T_IDX]))


def test_q_sample(ref, data):
    x0, noise, _, _ = data
    expected = np.sqrt(ref.col(ref.abar, T_IDX)) * x0.numpy() + np.sqrt(1 - ref.col(ref.abar, T_IDX)) * noise.numpy()
    close(DDPMPlusScheduler().q_sample(x0, noise, T(T_IDX)), expected)
    assert DDPMPlusScheduler().q_sample(x0.float(), noise.float(), T(T_IDX)).dtype == torch.float32


def test_q_posterior_mean_variance(ref, data):
    x0, noise, out, _ = data
    xt = out  # any x_t
    mean, var, logvar = DDPMPlusScheduler().q_posterior_mean_variance(x0, xt, T(T_IDX))
    close(mean, ref.col(ref.c_x0, T_IDX) * x0.numpy() + ref.col(ref.c_xt, T_IDX) * xt.numpy())
    close(var, np.broadcast_to(ref.col(ref.post_var, T_IDX), SHAPE))
    close(logvar, np.broadcast_to(ref.col(ref.post_logvar, T_IDX), SHAPE))
    assert var[0].abs().max() == 0 and torch.isfinite(logvar).all()  # β̃ = 0 at t = 0, log clipped


KINDS = ["epsilon", "sample", "v_prediction", "mean"]


@pytest.mark.parametrize("source", KINDS)
@pytest.mark.parametrize("target", KINDS)
def test_convert_prediction(ref, data, source, target):
    x0, noise, out, _ = data
    xt = out
    expected_x0 = ref.x0_from(source, noise.numpy(), xt.numpy(), T_IDX)
    expected = noise.numpy() if source == target else ref.output_from(target, expected_x0, xt.numpy(), T_IDX)
    s = DDPMPlusScheduler(prediction_type=source)
    close(s.convert_prediction(noise, xt, T(T_IDX), to=target), expected, 1e-9)


def test_convert_model_output_is_a_deprecated_alias_of_convert_prediction(data):
    """The old name (which diffusers' multistep schedulers use for another conversion) warns and returns the same."""
    _, noise, xt, _ = data
    scheduler = DDPMPlusScheduler(prediction_type="v_prediction")
    expected = scheduler.convert_prediction(noise, xt, T(T_IDX), to="epsilon")
    with pytest.warns(FutureWarning, match=r"convert_model_output` is deprecated .* use `convert_prediction`"):
        by_old_name = scheduler.convert_model_output(noise, xt, T(T_IDX), "epsilon", prediction_type="v_prediction")
    assert torch.equal(by_old_name, expected)


@pytest.mark.parametrize("prediction_type", KINDS)
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned", "learned_range"])
@pytest.mark.parametrize("clip", [False, True])
def test_p_mean_variance(ref, data, prediction_type, variance_type, clip):
    x0, noise, out, var_out = data
    xt = noise
    s = DDPMPlusScheduler(prediction_type=prediction_type, variance_type=variance_type)
    model_output = torch.cat([out, var_out], 1) if variance_type.startswith("learned") else out
    mean, var, logvar, pred_x0 = s.p_mean_variance(model_output, xt, T(T_IDX), clip_denoised=clip)
    exp_x0 = ref.x0_from(prediction_type, out.numpy(), xt.numpy(), T_IDX)
    if clip:
        exp_x0 = np.clip(exp_x0, -1, 1)
    exp_mean = ref.col(ref.c_x0, T_IDX) * exp_x0 + ref.col(ref.c_xt, T_IDX) * xt.numpy()
    exp_logvar = np.broadcast_to(ref.model_logvar(variance_type, var_out.numpy(), T_IDX), SHAPE)
    close(pred_x0, exp_x0, 1e-9)
    close(mean, exp_mean, 1e-9)
    close(logvar, exp_logvar)
    close(var, np.exp(exp_logvar))


def test_prior_bpd(ref, data):
    x0 = data[0]
    ab = ref.abar[-1]
    kl = gauss_kl(np.sqrt(ab) * x0.numpy(), np.log(1 - ab), 0.0, 0.0)
    close(DDPMPlusScheduler().prior_bpd(x0), kl.reshape(5, -1).mean(1) / LN2, 1e-12)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
def test_vb_terms_bpd(ref, data, variance_type):
    x0, noise, out, var_out = data
    s = DDPMPlusScheduler(variance_type=variance_type)
    xt = s.q_sample(x0, noise, T(T_IDX))
    model_output = torch.cat([out, var_out], 1) if variance_type == "learned_range" else out
    got = s.vb_terms_bpd(model_output, x0, xt, T(T_IDX))

    xt_ = np.sqrt(ref.col(ref.abar, T_IDX)) * x0.numpy() + np.sqrt(1 - ref.col(ref.abar, T_IDX)) * noise.numpy()
    pred_x0 = ref.x0_from("epsilon", out.numpy(), xt_, T_IDX)
    mean = ref.col(ref.c_x0, T_IDX) * pred_x0 + ref.col(ref.c_xt, T_IDX) * xt_
    logvar = np.broadcast_to(ref.model_logvar(variance_type, var_out.numpy(), T_IDX), SHAPE)
    true_mean = ref.col(ref.c_x0, T_IDX) * x0.numpy() + ref.col(ref.c_xt, T_IDX) * xt_
    kl = gauss_kl(true_mean, ref.col(ref.post_logvar, T_IDX), mean, logvar).reshape(5, -1).mean(1) / LN2
    decoder = -ref_decoder_loglik(x0.numpy()[0], mean[0], logvar[0]).mean() / LN2
    expected = np.concatenate([[decoder], kl[1:]])
    close(got, expected, 1e-9)


def test_discretized_likelihood_matches_high_precision_including_tails():
    levels = torch.tensor([0, 1, 2, 64, 127, 128, 200, 253, 254, 255], dtype=torch.float64)
    x = (levels / 127.5 - 1).repeat(6)
    means = torch.tensor([-1.0, 0.0, 0.5, 0.99, -2.0, 3.0], dtype=torch.float64).repeat_interleave(10)
    log_scales = torch.tensor([-6.0, -3.0, -1.0, 0.0, -4.5, -2.0], dtype=torch.float64).repeat_interleave(10)
    got = discretized_gaussian_log_likelihood(x, means, log_scales)
    expected = np.array(
        [
            mp_log_bin_mass(a, m, math.exp(s))
            for a, m, s in zip(x.tolist(), means.tolist(), log_scales.tolist(), strict=True)
        ]
    )
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert got.min() < -1000  # far tails are represented exactly instead of being floored


@pytest.mark.parametrize("mean,log_scale", [(0.3, -4.0), (-0.97, -2.0), (0.0, 0.5), (1.5, -3.0)])
def test_discretized_likelihood_sums_to_one(mean, log_scale):
    x = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    logp = discretized_gaussian_log_likelihood(x, torch.tensor(mean, dtype=torch.float64), torch.tensor(log_scale))
    assert abs(torch.logsumexp(logp, 0).item()) < 1e-12


def test_discretized_likelihood_float32_and_gradients():
    x = torch.tensor([-1.0, -0.2, 129 / 127.5 - 1, 1.0])
    mean = torch.tensor([0.1, -0.25, 0.3, 0.9], requires_grad=True)
    log_scale = torch.tensor([-3.0, -5.0, -2.0, -8.0], requires_grad=True)
    logp = discretized_gaussian_log_likelihood(x, mean, log_scale)
    logp.sum().backward()
    assert torch.isfinite(logp).all() and torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad).all()
    expected = [
        mp_log_bin_mass(a, m, math.exp(s))
        for a, m, s in zip(x.tolist(), mean.tolist(), log_scale.tolist(), strict=True)
    ]
    np.testing.assert_allclose(logp.detach().numpy(), expected, rtol=2e-5)


@pytest.mark.parametrize(
    "x,message",
    [
        (torch.tensor([0.0, 1.2]), "must lie in"),
        (torch.tensor([0.0, 0.001]), "not 8-bit"),
        (torch.tensor([0.0, float("nan")]), "NaN"),
        (torch.tensor([0.0, 1.0], dtype=torch.float16), "float32 or float64"),
    ],
)
def test_discretized_likelihood_bad_data(x, message):
    with pytest.raises(ValueError, match=message):
        discretized_gaussian_log_likelihood(x, torch.zeros(()), torch.zeros(()))


@pytest.mark.parametrize("prediction_type", KINDS)
def test_training_losses_targets_and_snr_weights(ref, data, prediction_type):
    x0, noise, out, _ = data
    s = DDPMPlusScheduler(prediction_type=prediction_type)
    xt_ = np.sqrt(ref.col(ref.abar, T_IDX)) * x0.numpy() + np.sqrt(1 - ref.col(ref.abar, T_IDX)) * noise.numpy()
    target = {
        "epsilon": noise.numpy(),
        "sample": x0.numpy(),
        "v_prediction": np.sqrt(ref.col(ref.abar, T_IDX)) * noise.numpy()
        - np.sqrt(1 - ref.col(ref.abar, T_IDX)) * x0.numpy(),
        "mean": ref.col(ref.c_x0, T_IDX) * x0.numpy() + ref.col(ref.c_xt, T_IDX) * xt_,
    }[prediction_type]
    sq = (target - out.numpy()) ** 2
    losses = s.training_losses(out, x0, noise, T(T_IDX))
    close(losses["mse"], sq.reshape(5, -1).mean(1), 1e-9)
    close(losses["loss"], sq.reshape(5, -1).mean(1), 1e-9)
    assert "vb" not in losses

    # min-SNR-γ: the weight makes the loss min(SNR, γ)·‖x_0 - x̂_0‖²
    gamma = 5.0
    x0_hat = ref.x0_from(prediction_type, out.numpy(), xt_, T_IDX)
    snr = ref.abar[T_IDX] / (1 - ref.abar[T_IDX])
    expected = np.minimum(snr, gamma) * ((x0.numpy() - x0_hat) ** 2).reshape(5, -1).mean(1)
    weighted = s.training_losses(out, x0, noise, T(T_IDX), snr_gamma=gamma)
    close(weighted["mse"], expected, 1e-8)


def test_training_losses_vlb_kl_hybrid(data):
    x0, noise, out, var_out = data
    t = T(T_IDX)
    s = DDPMPlusScheduler(variance_type="learned_range")
    model_output = torch.cat([out, var_out], 1).requires_grad_(True)
    xt = s.q_sample(x0, noise, t)
    vb = s.vb_terms_bpd(model_output, x0, xt, t)
    kl = s.training_losses(model_output, x0, noise, t, loss_type="kl")
    vlb = s.training_losses(model_output, x0, noise, t, loss_type="vlb")
    hybrid = s.training_losses(model_output, x0, noise, t, loss_type="hybrid")
    close(kl["loss"], vb.detach().numpy(), 1e-12)
    close(vlb["loss"], 1000 * vb.detach().numpy(), 1e-12)
    close(hybrid["loss"], (hybrid["mse"] + 0.001 * 1000 * vb).detach().numpy(), 1e-12)
    # hybrid: the vb term trains only the variance channels; the mean channels see the MSE gradient alone
    (grad_hybrid,) = torch.autograd.grad(hybrid["loss"].sum(), model_output, retain_graph=True)
    (grad_mse,) = torch.autograd.grad(hybrid["mse"].sum(), model_output)
    assert torch.equal(grad_hybrid[:, :2], grad_mse[:, :2])
    assert grad_hybrid[:, 2:].abs().sum() > 0
    (grad_vlb,) = torch.autograd.grad(vlb["loss"].sum(), model_output)
    assert grad_vlb[:, :2].abs().sum() > 0


def test_closed_form_gaussian_data_bound():
    """x_0 ~ N(m, s²) per dimension and the Bayes-optimal ε*: KL terms have a closed form.

    Per sample: μ̃ - μ* = c_x0 (x_0 - E[x_0|x_t]) with E[x_0|x_t] = m + √ᾱ s² (x_t - √ᾱ m)/(ᾱ s² + 1 - ᾱ), so
    KL_t = ½(-1 + log σ² - log β̃ + β̃/σ² + c_x0² (x_0 - E[x_0|x_t])²/σ²) exactly; in expectation the last factor is
    Var[x_0|x_t] = s²(1-ᾱ)/(ᾱ s² + 1 - ᾱ), which gives the closed form of Σ_{t>0} E[L_t] + E[L_T].
    """
    m, s_, T_ = 0.1, 0.3, 1000
    ref = Reference(linear_betas(T_))
    sched = DDPMPlusScheduler(variance_type="fixed_small")
    g = torch.Generator().manual_seed(1)
    n = 400
    x0 = m + s_ * torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    total_mc = torch.zeros(n, dtype=torch.float64)
    for t in range(1, T_):
        noise = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
        xt = sched.q_sample(x0, noise, t)
        ab = ref.abar[t]
        eps_star = math.sqrt(1 - ab) * (xt - math.sqrt(ab) * m) / (ab * s_**2 + 1 - ab)
        # exact per-sample identity (independent of the scheduler's internals)
        posterior_x0 = m + math.sqrt(ab) * s_**2 * (xt - math.sqrt(ab) * m) / (ab * s_**2 + 1 - ab)
        lv, post = ref.post_logvar[t], ref.post_var[t]
        exact = 0.5 * (
            -1 + lv - np.log(post) + post / np.exp(lv) + ref.c_x0[t] ** 2 * (x0 - posterior_x0) ** 2 / np.exp(lv)
        )
        kl = sched.vb_terms_bpd(eps_star, x0, xt, t) * LN2
        np.testing.assert_allclose(kl.numpy(), exact.flatten().numpy(), rtol=1e-9, atol=1e-13)
        total_mc += kl.flatten()
    prior = sched.prior_bpd(x0) * LN2
    total_mc += prior
    t = np.arange(1, T_)
    var_post = s_**2 * (1 - ref.abar[t]) / (ref.abar[t] * s_**2 + 1 - ref.abar[t])
    lv = ref.post_logvar[t]
    closed = np.sum(
        0.5
        * (-1 + lv - np.log(ref.post_var[t]) + ref.post_var[t] / np.exp(lv) + ref.c_x0[t] ** 2 * var_post / np.exp(lv))
    )
    abT = ref.abar[-1]
    closed += 0.5 * (-1 - np.log(1 - abT) + (1 - abT) + abT * (m**2 + s_**2))
    stderr = total_mc.std().item() / math.sqrt(n)
    assert abs(total_mc.mean().item() - closed) < 4 * stderr


def test_bound_terms_use_vb_for_decoder_only_at_t0(data):
    x0, noise, out, _ = data
    s = DDPMPlusScheduler()
    xt = s.q_sample(x0, noise, 3)
    kl_only = s.vb_terms_bpd(out, x0, xt, 3)
    assert kl_only.shape == (5,) and torch.isfinite(kl_only).all()


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"beta_schedule": "cubic"}, "beta_schedule"),
        ({"prediction_type": "flow"}, "prediction_type"),
        ({"variance_type": "huge"}, "variance_type"),
    ],
)
def test_unknown_choices_name_valid_options(kwargs, name):
    with pytest.raises(ValueError, match=f"{name}.*valid choices are"):
        DDPMPlusScheduler(**kwargs)


def test_bad_inputs():
    s = DDPMPlusScheduler(variance_type="learned_range")
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="twice the sample's channels"):
        s.step(torch.zeros(2, 3, 4, 4), 10, x)
    with pytest.raises(ValueError, match="twice the sample's channels"):
        s.p_mean_variance(torch.zeros(2, 4, 4, 4), x, 10)
    with pytest.raises(ValueError, match="sample's 3 channels"):
        DDPMPlusScheduler().step(torch.zeros(2, 6, 4, 4), 10, x)
    with pytest.raises(ValueError, match=r"timesteps must lie in 0\.\.999"):
        DDPMPlusScheduler().q_sample(x, x, torch.tensor([0, 1000]))
    with pytest.raises(ValueError, match="shape"):
        DDPMPlusScheduler().q_sample(x, x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="loss_type"):
        DDPMPlusScheduler().training_losses(x, x, x, 3, loss_type="l1")
    with pytest.raises(ValueError, match="hybrid"):
        DDPMPlusScheduler().training_losses(x, x, x, 3, loss_type="hybrid")
    with pytest.raises(ValueError, match="not 8-bit"):
        DDPMPlusScheduler().training_losses(x, x + 0.001, x, torch.tensor([0, 3]), loss_type="vlb")


def test_fixed_large_log_is_finite_where_diffusers_gives_nan():
    x = torch.linspace(-1, 1, 48).reshape(1, 3, 4, 4)
    eps = torch.linspace(1, -1, 48).reshape(1, 3, 4, 4)
    theirs = DDPMScheduler(variance_type="fixed_large_log").step(eps, 500, x, generator=torch.manual_seed(0))
    ours = DDPMPlusScheduler(variance_type="fixed_large_log").step(eps, 500, x, generator=torch.manual_seed(0))
    large = DDPMPlusScheduler(variance_type="fixed_large").step(eps, 500, x, generator=torch.manual_seed(0))
    assert torch.isnan(theirs.prev_sample).all()
    torch.testing.assert_close(ours.prev_sample, large.prev_sample, rtol=1e-6, atol=1e-6)


def test_learned_variance_is_log_variance_where_diffusers_gives_nan(ref):
    x = torch.linspace(-1, 1, 48, dtype=torch.float64).reshape(1, 3, 4, 4)
    eps = torch.linspace(1, -1, 48, dtype=torch.float64).reshape(1, 3, 4, 4)
    log_var = torch.full_like(x, -5.0)
    output = torch.cat([eps, log_var], 1)
    theirs = DDPMScheduler(variance_type="learned").step(output, 500, x, generator=torch.manual_seed(0))
    ours = DDPMPlusScheduler(variance_type="learned", clip_sample=False).step(
        output, 500, x, generator=torch.manual_seed(0)
    )
    assert torch.isnan(theirs.prev_sample).all()
    noise = torch.randn(x.shape, generator=torch.manual_seed(0), dtype=torch.float64)
    x0 = ref.x0_from("epsilon", eps.numpy(), x.numpy(), np.array([500]))
    expected = ref.c_x0[500] * x0 + ref.c_xt[500] * x.numpy() + np.exp(-2.5) * noise.numpy()
    # the sampling path uses diffusers' float32 coefficient tables, hence float32-level agreement
    np.testing.assert_allclose(ours.prev_sample.numpy(), expected, rtol=1e-6, atol=1e-6)


def chain_coefficients(ab: float, ab_prev: float) -> tuple[float, float, float]:
    """(c_x0, c_xt, β̃) of q(x_prev | x_t, x_0) between two points of a (respaced) chain, eq. 7."""
    beta = 1 - ab / ab_prev
    return (
        math.sqrt(ab_prev) * beta / (1 - ab),
        math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab),
        beta * (1 - ab_prev) / (1 - ab),
    )


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("num_steps", [10, 1000])
def test_mean_prediction_step(ref, clip, num_steps):
    """prediction_type="mean": the output is μ_θ of the training chain's step t → t-1.

    Without respacing or clipping μ_θ is used as is; otherwise x̂_0 is recovered from μ_θ with the training-chain
    coefficients and the (respaced) posterior mean is formed from it.
    """
    x = torch.linspace(-1, 1, 48, dtype=torch.float64).reshape(1, 3, 4, 4)
    mean = torch.linspace(0.8, -1.3, 48, dtype=torch.float64).reshape(1, 3, 4, 4)
    s = DDPMPlusScheduler(prediction_type="mean", clip_sample=clip)
    s.set_timesteps(num_steps)
    index = 3 if num_steps == 10 else 400
    t, prev_t = int(s.timesteps[index]), int(s.timesteps[index + 1])
    out = s.step(mean, t, x, generator=torch.manual_seed(0))
    noise = torch.randn(x.shape, generator=torch.manual_seed(0), dtype=torch.float64).numpy()
    train_x0, train_xt, _ = chain_coefficients(ref.abar[t], ref.abar[t - 1])
    step_x0, step_xt, step_var = chain_coefficients(ref.abar[t], ref.abar[prev_t])
    x0 = (mean.numpy() - train_xt * x.numpy()) / train_x0
    if clip:
        x0 = np.clip(x0, -1, 1)
    expected_mean = mean.numpy() if (not clip and prev_t == t - 1) else step_x0 * x0 + step_xt * x.numpy()
    # the sampling path uses diffusers' float32 coefficient tables, hence float32-level agreement
    np.testing.assert_allclose(out.pred_original_sample.numpy(), x0, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(
        out.prev_sample.numpy(), expected_mean + math.sqrt(step_var) * noise, rtol=2e-5, atol=2e-5
    )


def test_mean_prediction_matches_equivalent_epsilon_output():
    """The same μ_θ given as "mean" or converted to ε gives the same respaced samples."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    as_eps = DDPMPlusScheduler(clip_sample=False)
    as_mean = DDPMPlusScheduler(prediction_type="mean", clip_sample=False)
    for s in (as_eps, as_mean):
        s.set_timesteps(25)
    for t in as_eps.timesteps[::6]:
        mean = as_mean.convert_prediction(eps, x, int(t), to="mean", prediction_type="epsilon")
        a = as_eps.step(eps, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
        b = as_mean.step(mean, t, x, generator=torch.Generator().manual_seed(1)).prev_sample
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
