"""Checkpoints know what they belong to: model, data, settings; damaged files never load."""

import math
import os
import subprocess
import sys

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import ppl_vi
from ppl_vi import CheckpointError
from ppl_vi.models import normal_normal

DATA = normal_normal.load_data()
OPTIONS = {"num_steps": 300, "progress": False, "convergence": None, "seed": 5}


def fit(path, **kwargs):
    options = {**OPTIONS, "checkpoint": path, **kwargs}
    data = options.pop("data", DATA)
    model = options.pop("model", normal_normal.model)
    return ppl_vi.fit(model, **data, **options)


def stop_at(step):
    return lambda state: state.step == step


def assert_same_fit(a, b):
    np.testing.assert_array_equal(a.losses, b.losses)
    for name, value in a.params.items():
        assert torch.equal(b.params[name], value), name


def make_model(prior_sd):
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, prior_sd))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    return model


# ------------------------------------------------------------------ stale checkpoints
@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"data": {"x": DATA["x"] - 10.0}}, r"the data differ \(argument 'x' differs\)"),
        ({"lr": 0.001}, r"settings differ \(optim: .*'lr': 0.01.* in the file, .*'lr': 0.001"),
        ({"num_steps": 200}, r"num_steps: 300 in the file, 200 now"),
        ({"seed": 6}, r"seed: 5 in the file, 6 now"),
        ({"guide": "full_rank"}, r"settings differ \(guide:"),
        ({"polish": ppl_vi.Polish(fraction=0.5)}, r"polish: .*'fraction': 0.2"),
        ({"lr_schedule": lambda step: 0.5}, r"lr_schedule: None in the file"),
    ],
)
def test_a_checkpoint_of_another_fit_is_refused_and_left_untouched(tmp_path, change, match):
    path = tmp_path / "fit.ckpt"
    fit(path, callbacks=[stop_at(120)])
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=match) as err:
        fit(path, **change)
    assert "resume='force'" in str(err.value) and "resume='restart'" in str(err.value)
    assert path.read_bytes() == before


def test_an_edited_prior_is_a_different_model(tmp_path):
    path = tmp_path / "fit.ckpt"
    fit(path, model=make_model(10.0), callbacks=[stop_at(120)])
    with pytest.raises(CheckpointError, match=r"the model differs \(its code, closure"):
        fit(path, model=make_model(1.0))
    # the same prior again resumes
    resumed = fit(path, model=make_model(10.0))
    assert_same_fit(resumed, fit(tmp_path / "other.ckpt", model=make_model(10.0)))


def test_a_finished_fit_is_returned_again_without_training(tmp_path):
    path = tmp_path / "fit.ckpt"
    first = fit(path)
    stamp = path.stat().st_mtime_ns
    calls = []
    again = fit(path, callbacks=[calls.append])
    assert calls == [] and path.stat().st_mtime_ns == stamp
    assert_same_fit(first, again)


def test_a_finished_fit_asked_for_more_steps_is_extended(tmp_path):
    path = tmp_path / "fit.ckpt"
    first = fit(path)
    seen = []
    longer = fit(path, num_steps=500, callbacks=[lambda s: seen.append((s.step, s.phase))])
    assert longer.num_steps == 500
    np.testing.assert_array_equal(longer.losses[:300], first.losses)
    # training continued from step 301 with a new main phase, then a new final phase over
    # the last 20% of the new total
    assert seen[0] == (301, "main") and seen[-1] == (500, "polish")
    assert [p for s, p in seen if s <= 400] == ["main"] * 100
    # the extension started from the first fit's (averaged) parameters
    store_first = first.params["MeanField.locs.mu"]
    assert abs(float(longer.params["MeanField.locs.mu"] - store_first)) < 0.2


def test_resume_force_continues_with_the_new_learning_rate(tmp_path):
    path = tmp_path / "fit.ckpt"
    fit(path, callbacks=[stop_at(120)], polish=None)
    with pytest.warns(RuntimeWarning, match=r"resume='force' although settings differ"):
        forced = fit(path, lr=0.0005, resume="force", polish=None)
    # the same as an uninterrupted fit whose learning rate drops to 0.0005 after step 120
    factor = [1.0] * 120 + [0.05] * 180
    whole = fit(tmp_path / "whole.ckpt", lr_schedule=lambda t: factor[t], polish=None)
    np.testing.assert_allclose(forced.losses, whole.losses, rtol=1e-6)
    for name, value in whole.params.items():
        torch.testing.assert_close(forced.params[name], value, rtol=1e-5, atol=1e-6)


def test_resume_restart_starts_over_and_overwrites(tmp_path):
    path = tmp_path / "fit.ckpt"
    fit(path, data={"x": DATA["x"] - 10.0}, callbacks=[stop_at(120)])
    restarted = fit(path, resume="restart")
    assert_same_fit(restarted, fit(tmp_path / "fresh.ckpt"))
    assert_same_fit(restarted, fit(path))  # the file now holds the new fit


def test_bad_resume_mode_is_refused():
    with pytest.raises(ValueError, match=r"resume must be one of \('auto', 'force', 'restart'\)"):
        ppl_vi.fit(normal_normal.model, **DATA, resume="yes", progress=False)


# ------------------------------------------------------------------ damaged and foreign files
def test_edited_bytes_are_detected(tmp_path):
    path = tmp_path / "fit.ckpt"
    fit(path, callbacks=[stop_at(120)])
    raw = bytearray(path.read_bytes())
    payload = torch.load(path, weights_only=True)
    # change one stored parameter value in place (same length, so the archive stays readable)
    target = payload["params"]["MeanField.locs.mu"].numpy().tobytes()
    at = raw.find(target)
    assert at > 0
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"does not match its checksum: it was edited"):
        fit(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "content",
    [
        os.urandom(4096),
        b"step,loss\n1,3.2\n2,3.1\n",
        b"",
        b"\x80\x04\x95",  # a truncated pickle
    ],
    ids=["random-bytes", "csv", "empty", "truncated-pickle"],
)
def test_foreign_files_raise_checkpoint_error(tmp_path, content):
    path = tmp_path / "fit.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"cannot read the checkpoint .* left untouched"):
        fit(path)
    assert path.read_bytes() == content


def test_a_torch_file_without_a_header_is_refused(tmp_path):
    path = tmp_path / "fit.ckpt"
    torch.save({"params": {}, "step": 3}, path)
    with pytest.raises(CheckpointError, match=r"is not a ppl-vi file"):
        fit(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match=r"is not a ppl-vi file"):
        fit(path)


def test_an_incomplete_ppl_vi_file_is_refused(tmp_path):
    from ppl_vi import io
    from ppl_vi.fingerprint import digest

    path = tmp_path / "fit.ckpt"
    payload = {**io.header("checkpoint"), "fingerprint": {}}
    payload["checksum"] = digest(payload)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"is incomplete \(no \['params', 'optim'"):
        fit(path)


def test_an_old_format_checkpoint_is_refused_with_the_way_out(tmp_path):
    path = tmp_path / "fit.ckpt"
    torch.save({"format": "ppl_vi", "version": 1, "kind": "checkpoint", "loop": {}}, path)
    with pytest.raises(CheckpointError, match=r"older ppl-vi .* resume='restart'"):
        fit(path)
    assert fit(path, resume="restart").num_steps == 300


# ------------------------------------------------------------------ interruption and temp files
def test_ctrl_c_inside_a_step_rewinds_it_and_resume_is_bitwise(tmp_path):
    flag = {"raise": False}

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        if flag["raise"]:
            flag["raise"] = False
            raise KeyboardInterrupt  # Ctrl-C arriving while the model runs
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def arm(state):
        if state.step == 137:
            flag["raise"] = True

    path = tmp_path / "fit.ckpt"
    with pytest.warns(UserWarning, match=r"fit interrupted at step 137 of 300"):
        partial = fit(path, model=model, callbacks=[arm])
    assert partial.interrupted and partial.num_steps == 137
    resumed = fit(path, model=model)
    whole = fit(tmp_path / "whole.ckpt", model=model)
    assert_same_fit(resumed, whole)


def test_stale_temp_files_of_killed_writes_are_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    path = tmp_path / "fit.ckpt"
    stale = tmp_path / f"fit.ckpt.{pid}.deadbeef.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / "other.ckpt.123.cafe.tmp"  # another file's temp: not ours to remove
    other.write_bytes(b"x")
    fit(path)
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.ckpt", other.name]


def test_unwritable_checkpoint_path_is_refused_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    calls = []
    with pytest.raises(ValueError, match=r"cannot write the checkpoint"):
        fit(blocker / "fit.ckpt", callbacks=[calls.append])
    assert calls == []
    with pytest.raises(ValueError, match=r"checkpoint must be a file path, not a folder"):
        fit(tmp_path)


def test_nan_failure_with_a_checkpoint_keeps_the_last_good_state(tmp_path):
    flag = {"bad": False}

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        scale = torch.tensor(math.nan) if flag["bad"] else torch.tensor(1.0)
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, scale), obs=x)

    def poison(state):
        if state.step == 80:
            flag["bad"] = True

    path = tmp_path / "fit.ckpt"
    with pytest.raises(ppl_vi.NonFiniteLossError, match=r"at step 81") as err:
        fit(path, model=model, callbacks=[poison])
    assert err.value.result.num_steps == 80
    flag["bad"] = False
    payload = torch.load(path, weights_only=True)
    assert payload["loop"]["step"] == 80
    # the suggested fix, a smaller lr, needs resume='force' to reuse the checkpoint
    with pytest.raises(CheckpointError, match=r"optim"):
        fit(path, model=model, lr=0.001)
    with pytest.warns(RuntimeWarning, match="resume='force'"):
        forced = fit(path, model=model, lr=0.001, resume="force")
    assert forced.num_steps == 300
    np.testing.assert_array_equal(forced.losses[:80], err.value.result.losses)


@pytest.mark.parametrize("where", ["update", "model"])
def test_a_real_sigint_keeps_resume_bitwise(tmp_path, monkeypatch, where, sigint_handled):
    """SIGINT while the update is applied waits for it; SIGINT in the model rewinds the step."""
    import signal

    from ppl_vi import optim as optim_lib

    state = {"armed": False}
    original = optim_lib.apply_update

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        if where == "model" and state["armed"]:
            state["armed"] = False
            os.kill(os.getpid(), signal.SIGINT)
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def update(optim, params):
        if where == "update" and state["armed"]:
            state["armed"] = False
            os.kill(os.getpid(), signal.SIGINT)  # arrives between the update's operations
        original(optim, params)

    def arm(s):
        if s.step == 90:
            state["armed"] = True

    monkeypatch.setattr(optim_lib, "apply_update", update)
    path = tmp_path / "fit.ckpt"
    with pytest.warns(UserWarning, match="fit interrupted at step"):
        partial = fit(path, model=model, callbacks=[arm])
    # held until the update completed: step 91 counts; in the model: step 91 is rewound
    assert partial.num_steps == (91 if where == "update" else 90)
    resumed = fit(path, model=model)
    assert_same_fit(resumed, fit(tmp_path / "whole.ckpt", model=model))


def test_checkpoint_of_a_pyromodule_with_expanded_priors(tmp_path):
    """Pyro's regression tutorial shape: PyroSample priors built with ``.expand([1])`` hold
    stride-0 tensors, which the fingerprint must hash; numpy data, alpha[group] in a plate."""
    from pyro.nn import PyroModule, PyroSample

    rng = np.random.default_rng(0)
    x, group = rng.normal(size=(60, 3)), rng.integers(0, 4, 60)
    y = x @ np.array([1.0, -1.0, 0.5]) + rng.normal(size=60) * 0.3

    class Regression(PyroModule):
        def __init__(self):
            super().__init__()
            self.linear = PyroModule[torch.nn.Linear](3, 1)
            self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
            self.linear.bias = PyroSample(dist.Normal(0.0, 5.0).expand([1]).to_event(1))

        def forward(self, x, group, y=None):
            with pyro.plate("groups", 4):
                alpha = pyro.sample("alpha", dist.Normal(0.0, 1.0))
            mean = self.linear(x).squeeze(-1) + alpha[group]
            with pyro.plate("data", x.shape[0]):
                pyro.sample("obs", dist.Normal(mean, 0.3), obs=y)

    path = tmp_path / "fit.ckpt"
    kw = dict(num_steps=30, progress=False, polish=None, convergence=None, checkpoint=path)
    first = ppl_vi.fit(Regression(), x, group, y, **kw)
    again = ppl_vi.fit(Regression(), x, group, y, **kw)  # finished: returned, not retrained
    assert again.num_steps == first.num_steps == 30
    for name, value in first.params.items():
        assert torch.equal(value, again.params[name]), name
