"""Efron & Morris (1975) baseball data, as loaded by Pyro's ``examples/baseball.py``.

The example downloads ``EfronMorrisBB.txt``; the 18 players' first 45 at-bats and hits are
copied here so that nothing is downloaded. ``train_test_split`` in the example turns the
``At-Bats`` and ``Hits`` columns into float tensors, and the models are called as
``model(at_bats, hits)``.
"""

import torch

PLAYERS = [
    "Roberto Clemente",
    "Frank Robinson",
    "Frank Howard",
    "Jay Johnstone",
    "Ken Berry",
    "Jim Spencer",
    "Don Kessinger",
    "Luis Alvarado",
    "Ron Santo",
    "Ron Swoboda",
    "Del Unser",
    "Billy Williams",
    "George Scott",
    "Rico Petrocelli",
    "Ellie Rodriguez",
    "Bert Campaneris",
    "Thurman Munson",
    "Max Alvis",
]
AT_BATS = [45] * 18
HITS = [18, 17, 16, 15, 14, 14, 13, 12, 11, 11, 10, 10, 10, 10, 10, 9, 8, 7]


def data():
    train = torch.tensor(list(zip(AT_BATS, HITS, strict=True)), dtype=torch.float)
    at_bats, hits = train[:, 0], train[:, 1]
    return (at_bats, hits), {}
