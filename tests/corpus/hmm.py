"""Hidden Markov model ``model_1`` from Pyro's ``examples/hmm.py``, verbatim.

Discrete hidden states ``x_t`` (``infer={"enumerate": "parallel"}``) in a ``pyro.markov`` time
loop, a subsampled ``sequences`` plate (dim -2), a ``tones`` plate (dim -1), ragged sequences
handled with ``poutine.mask(mask=(t < lengths).unsqueeze(-1))`` and ``poutine.mask(mask=
include_prior)`` around the Dirichlet/Beta priors. The example does MAP Baum-Welch:
``AutoDelta(poutine.block(model, expose_fn=lambda msg: msg["name"].startswith("probs_")))`` with
``TraceEnum_ELBO(max_plate_nesting=2)``; ``pyro_guide`` and ``pyro_elbo`` build those. Changes:
simulated binary "chorales" (12 sequences of 4 to 8 steps over 8 tones from a 4-state HMM)
instead of the JSB data set, ``hidden_dim=4``, ``batch_size=4``.
"""

import argparse

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.infer.autoguide import AutoDelta
from pyro.util import ignore_jit_warnings

ARGS = argparse.Namespace(hidden_dim=4, batch_size=4, jit=False)


# Note that this is the "HMM" model in reference [1] (with the difference that
# in [1] the probabilities probs_x and probs_y are not MAP-regularized with
# Dirichlet and Beta distributions for any of the models)
def model(sequences, lengths, args, batch_size=None, include_prior=True):
    # Sometimes it is safe to ignore jit warnings. Here we use the
    # pyro.util.ignore_jit_warnings context manager to silence warnings about
    # conversion to integer, since we know all three numbers will be the same
    # across all invocations to the model.
    with ignore_jit_warnings():
        num_sequences, max_length, data_dim = map(int, sequences.shape)
        assert lengths.shape == (num_sequences,)
        assert lengths.max() <= max_length
    with poutine.mask(mask=include_prior):
        probs_x = pyro.sample(
            "probs_x",
            dist.Dirichlet(0.9 * torch.eye(args.hidden_dim) + 0.1).to_event(1),
        )
        probs_y = pyro.sample(
            "probs_y",
            dist.Beta(0.1, 0.9).expand([args.hidden_dim, data_dim]).to_event(2),
        )
    tones_plate = pyro.plate("tones", data_dim, dim=-1)
    # We subsample batch_size items out of num_sequences items. Note that since
    # we're using dim=-1 for the notes plate, we need to batch over a different
    # dimension, here dim=-2.
    with pyro.plate("sequences", num_sequences, batch_size, dim=-2) as batch:
        lengths = lengths[batch]
        x = 0
        # If we are not using the jit, then we can vary the program structure
        # each call by running for a dynamically determined number of time
        # steps, lengths.max(). However if we are using the jit, then we try to
        # keep a single program structure for all minibatches; the fixed
        # structure ends up being faster since each program structure would
        # need to trigger a new jit compile stage.
        for t in pyro.markov(range(max_length if args.jit else lengths.max())):
            with poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                x = pyro.sample(
                    f"x_{t}",
                    dist.Categorical(probs_x[x]),
                    infer={"enumerate": "parallel"},
                )
                with tones_plate:
                    pyro.sample(
                        f"y_{t}",
                        dist.Bernoulli(probs_y[x.squeeze(-1)]),
                        obs=sequences[batch, t],
                    )


def data():
    rng = np.random.default_rng(0)
    hidden_dim, data_dim, num_sequences, max_length = 4, 8, 12, 8
    trans = 0.1 / (hidden_dim - 1) * np.ones((hidden_dim, hidden_dim))
    np.fill_diagonal(trans, 0.9)
    emit = rng.beta(0.3, 1.0, size=(hidden_dim, data_dim))
    lengths = rng.integers(4, max_length + 1, size=num_sequences)
    sequences = np.zeros((num_sequences, max_length, data_dim))
    for i, length in enumerate(lengths):
        x = 0
        for t in range(length):
            x = rng.choice(hidden_dim, p=trans[x])
            sequences[i, t] = rng.random(data_dim) < emit[x]
    sequences = torch.tensor(sequences, dtype=torch.float)
    lengths = torch.tensor(lengths, dtype=torch.long)
    return (sequences, lengths), {"args": ARGS, "batch_size": ARGS.batch_size}


def pyro_guide(model):
    # We'll train using MAP Baum-Welch, i.e. MAP estimation while marginalizing
    # out the hidden state x.
    return AutoDelta(poutine.block(model, expose_fn=lambda msg: msg["name"].startswith("probs_")))


def pyro_elbo():
    return TraceEnum_ELBO(max_plate_nesting=2)
