"""The policies' documented defaults and small contracts: the default hooks, immutable settings,
the stopping rule on an engine without a warm-up, checkpoint timing, the progress bar's
settings, updates and failures, and the final phase's failure warning."""

import dataclasses
from types import SimpleNamespace

import pytest

from ppl_vi import Convergence, Polish
from ppl_vi import policies as policies_lib
from ppl_vi.policies import Checkpointing, Policy, ProgressBar


def test_documented_defaults():
    assert dataclasses.asdict(Convergence()) == {
        "tol": 1e-4, "window": 100, "lag": 5, "min_steps": 1000, "z": 2.0
    }  # fmt: skip
    assert dataclasses.asdict(Polish()) == {
        "fraction": 0.2, "lr_factor": 0.1, "average": True, "num_particles": 16
    }  # fmt: skip
    assert ProgressBar().enabled is True and ProgressBar().label == "fit"


def test_the_base_policy_changes_nothing():
    policy, state = Policy(), SimpleNamespace(step=3)
    assert policy.lr_scale(state) == 1.0 and policy.after_step(None, state) is False
    assert policy.settings() == {} and policy.rank_dependent(state) is False


def test_settings_are_immutable_once_made():
    # they are recorded in checkpoint fingerprints: a change after the fit started would
    # make the record wrong
    with pytest.raises(dataclasses.FrozenInstanceError):
        Convergence().tol = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        Polish().fraction = 0.5


def train_state(losses, phase="main"):
    return SimpleNamespace(losses=list(losses), phase=phase, converged=False, step=len(losses),
                           end=None)  # fmt: skip


def test_an_engine_without_a_warm_up_reads_every_loss():
    rule = Convergence(window=10, lag=2, min_steps=20, tol=1e-3)
    engine = SimpleNamespace(polish=None)  # no warmup_end: the losses start at step 0
    state = train_state([1.0] * 20)
    assert rule.after_step(engine, state) is False
    assert state.converged and state.end == 20  # 20 flat losses are min_steps exactly
    engine = SimpleNamespace(polish=None, warmup_end=lambda: 1)  # the first loss is warm-up
    state = train_state([1.0] * 20)
    rule.after_step(engine, state)
    assert not state.converged and state.end is None
    state = train_state([1.0] * 20, phase="polish")  # only the main phase stops
    rule.after_step(SimpleNamespace(polish=None), state)
    assert not state.converged


def test_checkpoints_are_written_every_few_steps_and_the_ranks_agree_on_when():
    saved = []
    engine = SimpleNamespace(save_checkpoint=lambda state, path, fp: saved.append(state.step))
    policy = Checkpointing("unused.pt", every=3, fingerprint={})
    states = [SimpleNamespace(step=s, phase="main") for s in range(1, 8)]
    assert [policy.rank_dependent(s) for s in states] == [False, False, True] * 2 + [False]
    for s in states:
        assert policy.after_step(engine, s) is False
    assert saved == [3, 6]


class FakeBar:
    def __init__(self, **kwargs):
        self.kwargs, self.postfix, self.updates, self.closed = kwargs, [], 0, False
        self.disable = kwargs["disable"]

    def update(self):
        self.updates += 1

    def set_postfix_str(self, text, refresh=True):
        self.postfix.append((text, refresh))

    def close(self):
        self.closed = True


@pytest.fixture
def bars(monkeypatch):
    made = []

    def make(**kwargs):
        made.append(FakeBar(**kwargs))
        return made[-1]

    monkeypatch.setattr(policies_lib, "tqdm", make)
    return made


def engine_at(rank=None):
    return SimpleNamespace(parallel=None if rank is None else SimpleNamespace(rank=rank))


def test_progress_bar_settings(bars):
    state = SimpleNamespace(num_steps=200, step=20, phase="main")
    ProgressBar(label="svi").start(engine_at(), state)
    # four redraws a second at most, as wide as the terminal, resuming at the step reached
    assert bars[0].kwargs == {
        "total": 200, "initial": 20, "disable": False, "desc": "svi", "unit": "step",
        "mininterval": 0.25, "dynamic_ncols": True,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("enabled", "phase", "rank", "disabled"),
    [
        (True, "main", None, False),
        (True, "main", 0, False),
        (True, "main", 1, True),  # one bar per data-parallel fit: rank 0's
        (True, "done", None, True),  # a finished fit asked again has nothing to show
        (False, "main", None, True),
        (False, "main", 0, True),
    ],
)
def test_progress_bar_is_shown_only_when_it_has_something_to_say(
    bars, enabled, phase, rank, disabled
):
    ProgressBar(enabled).start(engine_at(rank), SimpleNamespace(num_steps=5, step=0, phase=phase))
    assert bars[0].kwargs["disable"] is disabled


def test_progress_bar_shows_the_mean_of_the_last_100_losses_every_50_steps(bars):
    bar, state = ProgressBar(), SimpleNamespace(num_steps=200, step=0, phase="main", losses=[])
    bar.start(engine_at(), state)
    for step in range(1, 151):
        state.step = step
        state.losses.append(float(step))
        assert bar.after_step(engine_at(), state) is False
    assert bars[0].updates == 150
    # steps 50, 100, 150; the postfix waits for the next scheduled redraw
    assert bars[0].postfix == [
        (f"loss {sum(range(1, 51)) / 50:.5g}", False),
        (f"loss {sum(range(1, 101)) / 100:.5g}", False),
        (f"loss {sum(range(51, 151)) / 100:.5g}", False),
    ]
    bar.finish(engine_at(), state, "done")
    assert bars[0].closed and bar.bar is None
    bar.finish(engine_at(), state, "done")  # a second finish has no bar to close


@pytest.mark.parametrize("error", [OSError("terminal closed"), ValueError("I/O on closed file")])
def test_a_broken_terminal_turns_the_bar_off_and_the_fit_goes_on(bars, error):
    bar, state = ProgressBar(), SimpleNamespace(num_steps=10, step=0, phase="main", losses=[])
    bar.start(engine_at(), state)

    def broken():
        raise error

    bars[0].update = broken
    state.step = 1
    assert bar.after_step(engine_at(), state) is False
    assert bars[0].disable is True


def test_final_phase_failure_warning_quotes_the_first_line_of_the_error_up_to_200_chars():
    err = RuntimeError("x" * 300 + "\nsecond line")
    with pytest.warns(RuntimeWarning) as caught:
        policies_lib.warn_final_phase_failed(41, 30, err)
    text = str(caught[0].message)
    assert text == (
        f"the final phase failed at step 42 (RuntimeError: {'x' * 200}); returning the fit as "
        "of step 41 (the main phase ended at step 30)"
    )
    with pytest.warns(RuntimeWarning, match=r"\(KeyError: KeyError\); returning .* step 5$"):
        policies_lib.warn_final_phase_failed(5, None, KeyError())  # no message: the class name
