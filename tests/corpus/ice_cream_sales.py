"""``weather`` / ``ice_cream_sales`` from Pyro's tutorial ``intro_part_i.ipynb``, conditioned on
observed sales.

Verbatim functions: a discrete ``cloudy ~ Bernoulli(0.3)`` turned into a string with
``cloudy.item()``, dictionary look-ups of the temperature's mean and scale, ``temp.item()`` and a
Python branch ``200. if cloudy == 'sunny' and temp > 80.0 else 50.``. ``model(sales)`` conditions
the tutorial's ``ice_cream_sales`` on one observed value with ``pyro.condition`` (as
``intro_part_ii.ipynb`` does for ``scale``). The branch cuts gradients to ``temp``.
"""

import pyro
import torch


def weather():
    cloudy = pyro.sample("cloudy", pyro.distributions.Bernoulli(0.3))
    cloudy = "cloudy" if cloudy.item() == 1.0 else "sunny"
    mean_temp = {"cloudy": 55.0, "sunny": 75.0}[cloudy]
    scale_temp = {"cloudy": 10.0, "sunny": 15.0}[cloudy]
    temp = pyro.sample("temp", pyro.distributions.Normal(mean_temp, scale_temp))
    return cloudy, temp.item()


def ice_cream_sales():
    cloudy, temp = weather()
    expected_sales = 200.0 if cloudy == "sunny" and temp > 80.0 else 50.0
    ice_cream = pyro.sample("ice_cream", pyro.distributions.Normal(expected_sales, 10.0))
    return ice_cream


def model(sales):
    return pyro.condition(ice_cream_sales, data={"ice_cream": sales})()


def data():
    return (torch.tensor(180.0),), {}
