"""Amortized Latent Dirichlet Allocation from Pyro's ``examples/lda.py``.

Model, ``make_predictor`` and ``parametrized_guide`` are verbatim (minus a logging call):
Gamma/Dirichlet globals in a ``topics`` plate, a ``documents`` plate with a nested ``words``
plate and discrete ``word_topics`` marked ``infer={"enumerate": "parallel"}``. The example
trains with an amortized MLP guide (``functools.partial(parametrized_guide, predictor)``,
documents subsampled in the guide) and ``TraceEnum_ELBO(max_plate_nesting=2)`` (with
``ClippedAdam``); ``pyro_guide`` and ``pyro_elbo`` build those. Changes: a much smaller corpus
(3 topics, 24 words, 40 documents of 16 words, MLP 24-16-3, batches of 8) and, as in the
example's ``main``, the data are drawn by calling the model, here under ``poutine.seed`` so the
global RNG is untouched. The model takes the example's ``args`` namespace.
"""

import argparse
import functools

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from torch import nn
from torch.distributions import constraints

ARGS = argparse.Namespace(
    num_topics=3,
    num_words=24,
    num_docs=40,
    num_words_per_doc=16,
    layer_sizes="16",
    learning_rate=0.01,
    batch_size=8,
    jit=False,
)


# This is a fully generative model of a batch of documents.
# data is a [num_words_per_doc, num_documents] shaped array of word ids
# (specifically it is not a histogram). We assume in this simple example
# that all documents have the same number of words.
def model(data=None, args=None, batch_size=None):
    # Globals.
    with pyro.plate("topics", args.num_topics):
        topic_weights = pyro.sample("topic_weights", dist.Gamma(1.0 / args.num_topics, 1.0))
        topic_words = pyro.sample(
            "topic_words", dist.Dirichlet(torch.ones(args.num_words) / args.num_words)
        )

    # Locals.
    with pyro.plate("documents", args.num_docs) as ind:
        if data is not None:
            with pyro.util.ignore_jit_warnings():
                assert data.shape == (args.num_words_per_doc, args.num_docs)
            data = data[:, ind]
        doc_topics = pyro.sample("doc_topics", dist.Dirichlet(topic_weights))
        with pyro.plate("words", args.num_words_per_doc):
            # The word_topics variable is marginalized out during inference,
            # achieved by specifying infer={"enumerate": "parallel"} and using
            # TraceEnum_ELBO for inference. Thus we can ignore this variable in
            # the guide.
            word_topics = pyro.sample(
                "word_topics",
                dist.Categorical(doc_topics),
                infer={"enumerate": "parallel"},
            )
            data = pyro.sample("doc_words", dist.Categorical(topic_words[word_topics]), obs=data)

    return topic_weights, topic_words, data


# We will use amortized inference of the local topic variables, achieved by a
# multi-layer perceptron. We'll wrap the guide in an nn.Module.
def make_predictor(args):
    layer_sizes = (
        [args.num_words] + [int(s) for s in args.layer_sizes.split("-")] + [args.num_topics]
    )
    layers = []
    for in_size, out_size in zip(layer_sizes, layer_sizes[1:], strict=False):
        layer = nn.Linear(in_size, out_size)
        layer.weight.data.normal_(0, 0.001)
        layer.bias.data.normal_(0, 0.001)
        layers.append(layer)
        layers.append(nn.Sigmoid())
    layers.append(nn.Softmax(dim=-1))
    return nn.Sequential(*layers)


def parametrized_guide(predictor, data, args, batch_size=None):
    # Use a conjugate guide for global variables.
    topic_weights_posterior = pyro.param(
        "topic_weights_posterior",
        lambda: torch.ones(args.num_topics),
        constraint=constraints.positive,
    )
    topic_words_posterior = pyro.param(
        "topic_words_posterior",
        lambda: torch.ones(args.num_topics, args.num_words),
        constraint=constraints.greater_than(0.5),
    )
    with pyro.plate("topics", args.num_topics):
        pyro.sample("topic_weights", dist.Gamma(topic_weights_posterior, 1.0))
        pyro.sample("topic_words", dist.Dirichlet(topic_words_posterior))

    # Use an amortized guide for local variables.
    pyro.module("predictor", predictor)
    with pyro.plate("documents", args.num_docs, batch_size) as ind:
        data = data[:, ind]
        # The neural network will operate on histograms rather than word
        # index vectors, so we'll convert the raw data to a histogram.
        counts = torch.zeros(args.num_words, ind.size(0)).scatter_add(
            0, data, torch.ones(data.shape)
        )
        doc_topics = predictor(counts.transpose(0, 1))
        pyro.sample("doc_topics", dist.Delta(doc_topics, event_dim=1))


def data():
    # We can generate synthetic data directly by calling the model.
    _, _, data = poutine.seed(model, rng_seed=0)(args=ARGS)
    return (data,), {"args": ARGS, "batch_size": ARGS.batch_size}


def pyro_guide(model):
    predictor = make_predictor(ARGS)
    return functools.partial(parametrized_guide, predictor)


def pyro_elbo():
    return TraceEnum_ELBO(max_plate_nesting=2)
