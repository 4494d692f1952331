"""fit(): argument handling, stopping, determinism, failures and checkpoints."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import scipy.stats
import torch

import ppl_vi
from ppl_vi import CheckpointError, Convergence, NonFiniteLossError, Polish
from ppl_vi.fit import resolve_device
from ppl_vi.models import eight_schools, normal_normal

DATA = normal_normal.load_data()
QUICK = {"num_steps": 200, "progress": False, "convergence": None}


def quick_fit(**kwargs):
    options = {**QUICK, **kwargs}
    return ppl_vi.fit(normal_normal.model, **DATA, **options)


def stop_at(step):
    return lambda state: state.step == step


# ---------------------------------------------------------------- argument errors
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"guide": "nope"}, ValueError, r"unknown guide 'nope'; available guides: mean_field, "),
        (
            {"elbo": "nope"},
            ValueError,
            r"unknown elbo 'nope'; available elbos: elbo, rb_score, iwae, renyi, stein",
        ),
        ({"guide": 3}, TypeError, r"guide must be a guide name"),
        ({"elbo": 3}, TypeError, r"elbo must be an ELBO name"),
        ({"num_steps": 0}, ValueError, r"num_steps must be an integer >= 1 \(got num_steps=0\)"),
        ({"num_particles": 1.5}, ValueError, r"num_particles must be an integer >= 1"),
        ({"lr": -1.0}, ValueError, r"lr must be a positive number \(got lr=-1.0\)"),
        ({"clip_norm": 0.0}, ValueError, r"clip_norm must be > 0"),
        ({"checkpoint_every": 0}, ValueError, r"checkpoint_every must be an integer >= 1"),
        ({"optim": torch.optim.Adam}, TypeError, r"optim must be a pyro.optim optimizer"),
        (
            {"optim": pyro.optim.Adam({"lr": 0.1}), "lr": 0.1},
            ValueError,
            r"with optim=... set them on the optimizer",
        ),
        ({"callbacks": [3]}, TypeError, r"every callback must be callable"),
        ({"convergence": 0.01}, TypeError, r"convergence must be a ppl_vi.Convergence"),
        ({"polish": True}, TypeError, r"polish must be a ppl_vi.Polish"),
        ({"lr_schedule": 0.5}, TypeError, r"lr_schedule must be a callable"),
        ({"device": "tpu:x"}, ValueError, r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ({"guide_kwargs": {"init_scale": -1.0}}, ValueError, r"init_scale must be > 0"),
        (
            {"elbo": pyro.infer.Trace_ELBO(num_particles=2), "num_particles": 3},
            ValueError,
            r"num_particles=3 disagrees with the ELBO instance",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        quick_fit(**kwargs)


def test_model_must_be_callable():
    with pytest.raises(TypeError, match=r"model must be a callable Pyro program"):
        ppl_vi.fit("normal_normal")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tol": 0.0}, r"Convergence.tol must be > 0"),
        ({"window": 0}, r"Convergence.window must be an integer >= 1"),
    ],
)
def test_bad_convergence_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Convergence(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"fraction": 1.0}, r"Polish.fraction must be in \(0, 1\)"), ({"lr_factor": 0}, "lr_factor")],
)
def test_bad_polish_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Polish(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_request_without_cuda_is_rejected():
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"cuda.is_available\(\) is False; use device='auto'"):
        quick_fit(device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_device_uses_cuda_and_moves_data():
    result = quick_fit(device="auto")
    assert result.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in result.params.values())
    assert result.model_kwargs["x"].device.type == "cuda"


def test_device_cpu_keeps_everything_on_cpu():
    result = quick_fit(device="cpu")
    assert result.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in result.params.values())


# ---------------------------------------------------------------- isolation and determinism
def test_same_seed_gives_identical_losses_and_parameters():
    a = quick_fit(seed=3)
    b = quick_fit(seed=3)
    c = quick_fit(seed=4)
    np.testing.assert_array_equal(a.losses, b.losses)
    for name, value in a.params.items():
        assert torch.equal(value, b.params[name])
    assert not np.array_equal(a.losses, c.losses)


def test_fits_do_not_share_parameters_or_touch_the_global_store():
    pyro.param("user_param", torch.tensor(7.0))
    other = {"x": DATA["x"] + 10.0}
    a = quick_fit()
    a_params = a.params
    b = ppl_vi.fit(normal_normal.model, **other, **QUICK)
    # the second fit starts from scratch: identical to the same fit run on its own
    pyro.get_param_store().clear()
    b_alone = ppl_vi.fit(normal_normal.model, **other, **QUICK)
    np.testing.assert_array_equal(b.losses, b_alone.losses)
    # and the first result still holds its own parameters
    for name, value in a_params.items():
        assert torch.equal(a.params[name], value)
        assert not torch.equal(b.params[name], value)
    pyro.param("user_param", torch.tensor(7.0))
    assert list(pyro.get_param_store().keys()) == ["user_param"]
    assert pyro.param("user_param").item() == 7.0


# ---------------------------------------------------------------- stopping
def test_convergence_rule_on_synthetic_losses():
    rule = Convergence(tol=1e-2, window=10, lag=2, min_steps=30)
    falling = [100.0 - 0.5 * t for t in range(60)]
    flat = [50.0 + (0.3 if t % 2 else -0.3) for t in range(60)]
    noisy = [50.0 + (5.0 if t % 2 else -5.0) * (1 + t % 3) for t in range(60)]
    assert not rule.check(falling[:30]) and not rule.check(falling)
    assert rule.check(flat[:30]) and rule.check(flat)
    assert not rule.check(flat[:29]), "only checked on window boundaries after min_steps"
    assert not rule.check(noisy), "too noisy to be sure the loss is flat: keep going"
    # r = (|slope| + z * se) * window / |mean of the last window|, slope and se by least squares
    fit = scipy.stats.linregress(np.arange(20), falling[40:])
    expected = (abs(fit.slope) + 2.0 * fit.stderr) * 10 / np.mean(falling[50:])
    assert rule.relative_decrease(falling) == pytest.approx(expected, rel=1e-9)


def test_convergence_stops_early_and_then_polishes():
    polish = Polish(fraction=0.1)
    result = ppl_vi.fit(
        normal_normal.model,
        **DATA,
        num_steps=20000,
        progress=False,
        convergence=Convergence(tol=1e-3, min_steps=500),
        polish=polish,
    )
    assert result.converged
    stop = result.num_steps - round(polish.fraction * 20000)
    assert 500 <= stop < 18000 and stop % 100 == 0
    full = ppl_vi.fit(normal_normal.model, **DATA, num_steps=1200, progress=False, convergence=None)
    assert full.num_steps == 1200 and not full.converged


def test_callback_can_stop_the_fit_and_sees_the_state():
    seen = []

    def record(state):
        seen.append((state.step, state.loss, state.phase))
        return state.step == 37

    result = quick_fit(callbacks=[record])
    assert result.num_steps == 37 and not result.interrupted
    assert [s for s, _, _ in seen] == list(range(1, 38))
    assert [loss for _, loss, _ in seen] == list(result.losses)


def test_keyboard_interrupt_returns_partial_result_with_warning():
    def interrupt(state):
        if state.step == 30:
            raise KeyboardInterrupt

    with pytest.warns(UserWarning, match=r"fit interrupted at step 30 of 200; returning"):
        result = quick_fit(callbacks=[interrupt])
    assert result.interrupted and result.num_steps == 30
    reference = quick_fit(callbacks=[stop_at(30)], polish=None)
    for name, value in reference.params.items():
        assert torch.equal(result.params[name], value)


# ---------------------------------------------------------------- learning rate and polish
def test_lr_schedule_multiplies_the_learning_rate():
    frozen = quick_fit(lr_schedule=lambda step: 0.0, polish=None)
    init = quick_fit(num_steps=1, lr_schedule=lambda step: 0.0, polish=None)
    for name, value in frozen.params.items():
        assert torch.equal(value, init.params[name])
    moving = quick_fit(polish=None)
    assert not torch.equal(moving.params["MeanField.locs.mu"], frozen.params["MeanField.locs.mu"])


def test_polish_decays_lr_geometrically_and_returns_the_average():
    polish = Polish(fraction=0.25, lr_factor=0.1)
    factors, unconstrained = [], []

    def record(state):
        factors.append(state.lr_factor)
        if state.phase == "polish":
            store = pyro.get_param_store()
            unconstrained.append({k: store._params[k].detach().clone() for k in store.keys()})

    result = quick_fit(polish=polish, callbacks=[record])
    start = 200 - 50
    assert factors[:start] == [1.0] * start
    expected = [0.1 ** (k / 50) for k in range(50)]
    np.testing.assert_allclose(factors[start:], expected, rtol=1e-12)
    assert len(unconstrained) == 50
    with result.param_scope():
        store = pyro.get_param_store()
        for name in store.keys():
            mean = torch.stack([u[name] for u in unconstrained]).mean(0)
            torch.testing.assert_close(store._params[name].detach(), mean, rtol=1e-5, atol=1e-6)
    last_iterate = quick_fit(polish=Polish(fraction=0.25, lr_factor=0.1, average=False))
    assert not torch.equal(
        last_iterate.params["MeanField.locs.mu"], result.params["MeanField.locs.mu"]
    )


def test_clip_norm_changes_the_trajectory():
    clipped = quick_fit(clip_norm=1e-3)
    free = quick_fit()
    assert not np.array_equal(clipped.losses, free.losses)


def test_user_optimizer_is_used():
    sgd = quick_fit(optim=pyro.optim.SGD({"lr": 0.0}), polish=None)
    init = quick_fit(num_steps=1, lr_schedule=lambda step: 0.0, polish=None)
    for name, value in sgd.params.items():
        assert torch.equal(value, init.params[name])


# ---------------------------------------------------------------- non-finite values
def _switchable_model(flag):
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        scale = torch.tensor(math.nan) if flag["bad"] else torch.tensor(1.0)
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, scale), obs=x)

    return model


@pytest.mark.parametrize("validate", [True, False])
def test_nan_loss_names_step_and_site_and_keeps_last_finite_params(validate):
    flag = {"bad": False}

    def poison(state):
        if state.step == 50:
            flag["bad"] = True

    model = _switchable_model(flag)
    with pyro.validation_enabled(validate):
        with pytest.raises(NonFiniteLossError, match=r"at step 51; first found at sample site 'x'"):
            ppl_vi.fit(model, DATA["x"], **QUICK, callbacks=[poison])
        try:
            flag["bad"] = False
            ppl_vi.fit(model, DATA["x"], **QUICK, callbacks=[poison])
        except NonFiniteLossError as err:
            failed = err
    flag["bad"] = False
    clean = ppl_vi.fit(model, DATA["x"], **QUICK, callbacks=[stop_at(50)])
    assert failed.step == 51 and "'x'" in failed.site
    assert failed.result.num_steps == 50
    for name, value in clean.params.items():
        assert torch.equal(failed.result.params[name], value)


def test_nan_gradient_names_parameters():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.factor("kink", torch.sqrt(mu - mu))  # value 0, gradient 0 * inf = nan
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    with pytest.raises(NonFiniteLossError, match=r"gradient became non-finite at step 1") as info:
        ppl_vi.fit(model, DATA["x"], **QUICK)
    assert "MeanField.locs.mu" in str(info.value)
    assert info.value.result.num_steps == 0


# ---------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("stop", [120, 260])  # before, and inside, the polish phase
def test_checkpoint_resume_matches_an_uninterrupted_run(tmp_path, stop):
    path = tmp_path / "fit.ckpt"
    options = {"num_steps": 300, "progress": False, "convergence": None, "seed": 5}
    whole = ppl_vi.fit(normal_normal.model, **DATA, **options)
    first = ppl_vi.fit(
        normal_normal.model, **DATA, **options, checkpoint=path, callbacks=[stop_at(stop)]
    )
    assert first.num_steps == stop and path.exists()
    resumed = ppl_vi.fit(normal_normal.model, **DATA, **options, checkpoint=path)
    np.testing.assert_array_equal(resumed.losses, whole.losses)
    for name, value in whole.params.items():
        assert torch.equal(resumed.params[name], value)
    again = ppl_vi.fit(normal_normal.model, **DATA, **options, checkpoint=path)
    assert again.num_steps == 300
    for name, value in whole.params.items():
        assert torch.equal(again.params[name], value)


def test_checkpoint_is_written_periodically(tmp_path):
    path = tmp_path / "fit.ckpt"
    writes = []

    def watch(state):
        if path.exists():
            writes.append((state.step, path.stat().st_mtime_ns))

    quick_fit(checkpoint=path, checkpoint_every=50, callbacks=[watch])
    first_seen = min(step for step, _ in writes)
    assert first_seen == 51, "the first save happens right after step 50"
    payload = torch.load(path, weights_only=True)
    assert payload["loop"]["step"] == 200 and payload["loop"]["finished"]


def test_corrupt_checkpoint_raises_and_is_left_untouched(tmp_path):
    path = tmp_path / "fit.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"cannot read the checkpoint .* left untouched"):
        quick_fit(checkpoint=path)
    assert path.read_bytes() == b"not a checkpoint"


def test_checkpoint_of_another_model_raises_and_is_left_untouched(tmp_path):
    path = tmp_path / "fit.ckpt"
    quick_fit(checkpoint=path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"written for a different fit: the model differs"):
        ppl_vi.fit(eight_schools.model, **eight_schools.load_data(), **QUICK, checkpoint=path)
    assert path.read_bytes() == before


def test_result_file_is_not_accepted_as_checkpoint(tmp_path):
    path = tmp_path / "result.pt"
    quick_fit().save(path)
    with pytest.raises(CheckpointError, match=r"holds a ppl-vi 'result', not a 'checkpoint'"):
        quick_fit(checkpoint=path)


# ---------------------------------------------------------------- remaining flags
def test_progress_flag_controls_the_bar(capsys):
    quick_fit(progress=True)
    shown = capsys.readouterr().err
    assert "fit" in shown and "200/200" in shown
    quick_fit(progress=False)
    assert capsys.readouterr().err == ""


def test_seed_none_uses_the_current_random_state():
    pyro.set_rng_seed(1)
    a = quick_fit(seed=None)
    b = quick_fit(seed=None)
    seeded = quick_fit(seed=1)
    np.testing.assert_array_equal(a.losses, seeded.losses)
    assert not np.array_equal(a.losses, b.losses)


def test_polish_particles_only_change_the_final_phase():
    one = quick_fit(polish=Polish(fraction=0.2, num_particles=1), seed=2)
    many = quick_fit(polish=Polish(fraction=0.2, num_particles=16), seed=2)
    np.testing.assert_array_equal(one.losses[:160], many.losses[:160])
    # a 16-particle loss estimate has 1/16 of the variance; a factor 4 leaves room for noise
    assert one.losses[160:].var() > 4 * many.losses[160:].var()


def test_elbo_kwargs_reach_the_elbo():
    default = quick_fit(polish=None)
    averaged = quick_fit(polish=None, elbo_kwargs={"num_particles": 8})
    # step-to-step differences remove the trend; 8 particles cut the noise variance 8-fold
    assert np.diff(default.losses[100:]).var() > 4 * np.diff(averaged.losses[100:]).var()


def test_z_sets_how_sure_the_rule_must_be():
    noisy = [50.0 + (5.0 if t % 2 else -5.0) for t in range(60)]
    sure = Convergence(tol=0.05, window=10, lag=2, min_steps=30)  # r = 0.096
    hopeful = Convergence(tol=0.05, window=10, lag=2, min_steps=30, z=0.0)  # r = 0.015
    assert not sure.check(noisy) and hopeful.check(noisy)


def test_pyro_autoguide_class_and_instance_are_accepted():
    from pyro.infer.autoguide import AutoDiagonalNormal

    by_class = quick_fit(guide=AutoDiagonalNormal, guide_kwargs={"init_scale": 0.05})
    assert by_class.guide_spec["name"] is None
    assert by_class.guide_spec["class"].endswith("AutoDiagonalNormal")
    instance = AutoDiagonalNormal(normal_normal.model, init_scale=0.05)
    by_instance = quick_fit(guide=instance)
    np.testing.assert_array_equal(by_class.losses, by_instance.losses)


def test_linear_algebra_failure_stops_like_a_nan_and_keeps_last_params():
    flag = {"bad": False}

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        cov = torch.eye(2) * (-1.0 if flag["bad"] else 1.0)  # not positive definite when bad
        pyro.sample(
            "z", dist.MultivariateNormal(torch.zeros(2), scale_tril=torch.linalg.cholesky(cov))
        )
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def poison(state):
        if state.step == 30:
            flag["bad"] = True

    with pytest.raises(NonFiniteLossError, match=r"linear algebra failed on a draw .* at step 31"):
        try:
            ppl_vi.fit(model, DATA["x"], **QUICK, callbacks=[poison])
        except NonFiniteLossError as err:
            assert err.result.num_steps == 30
            raise


def test_model_structure_is_read_at_a_feasible_point_when_a_prior_draw_breaks_the_model():
    def model(x):
        s = pyro.sample("s", dist.Normal(0.0, 1.0))
        cov = torch.eye(2) * (1.0 + s)  # positive definite only for s > -1 (84% of draws)
        chol = torch.linalg.cholesky(cov)
        pyro.sample("z", dist.MultivariateNormal(torch.zeros(2), scale_tril=chol))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    from ppl_vi.infer_util import model_info

    broken = 0
    for seed in range(20):
        pyro.set_rng_seed(seed)
        try:
            pyro.poutine.trace(model).get_trace(DATA["x"])
        except torch.linalg.LinAlgError:
            broken += 1
        pyro.set_rng_seed(seed)
        info = model_info(model, (DATA["x"],), {})
        assert info.latent == {"s": (), "z": (2,)}
    assert broken > 0, "some prior draws must break the model for this test to mean anything"
