"""Simulated stand-in for the rugged-terrain data of Pyro's Bayesian regression tutorials.

The tutorials read ``rugged_data.csv`` (170 nations with a finite ``rgdppc_2000``) and keep
three columns: ``cont_africa`` (0/1), ``rugged`` (terrain ruggedness index, 0 to ~6) and
``rgdppc_2000`` (log GDP per capita). Nothing is downloaded here: a pandas DataFrame with
those columns is drawn with a fixed seed, with roughly the tutorial's fitted coefficients.
"""

import numpy as np
import pandas as pd


def rugged_dataframe(n=170, seed=0):
    rng = np.random.default_rng(seed)
    cont_africa = (rng.random(n) < 0.3).astype(np.float64)
    rugged = rng.gamma(shape=1.2, scale=1.1, size=n).clip(max=6.2)
    log_gdp = (
        9.2
        - 1.9 * cont_africa
        - 0.2 * rugged
        + 0.4 * cont_africa * rugged
        + 0.9 * rng.standard_normal(n)
    )
    df = pd.DataFrame(
        {"cont_africa": cont_africa, "rugged": rugged, "rgdppc_2000": np.exp(log_gdp)}
    )
    df = df[np.isfinite(df.rgdppc_2000)]
    df["rgdppc_2000"] = np.log(df["rgdppc_2000"])
    return df
