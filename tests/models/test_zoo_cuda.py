"""Every model runs on the device of its data (skipped without CUDA)."""

import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ppl_vi import models

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model_runs_on_cuda(name, float64):
    module = models.get(name)
    data = {k: v.cuda() if torch.is_tensor(v) else v for k, v in module.load_data().items()}
    kwargs = {"subsample_size": 16} if name == "logistic_regression" else {}
    trace = poutine.trace(module.model).get_trace(**data, **kwargs)
    log_p = trace.log_prob_sum()
    assert log_p.device.type == "cuda"
    for node in trace.nodes.values():
        if node["type"] == "sample" and not site_is_subsample(node):
            assert node["value"].device.type == "cuda", node["name"]
            assert node["value"].dtype == torch.float64, node["name"]
    if hasattr(module, "exact_posterior"):
        cpu_data = module.load_data()
        log_z = module.log_evidence(**data)
        assert log_z.device.type == "cuda"
        torch.testing.assert_close(log_z.cpu(), module.log_evidence(**cpu_data))
        for site, q in module.exact_posterior(**data).items():
            q_cpu = module.exact_posterior(**cpu_data)[site]
            assert q.mean.device.type == "cuda"
            z = q.sample()
            torch.testing.assert_close(q.log_prob(z).cpu(), q_cpu.log_prob(z.cpu()))
