"""The network: parameter counts, shapes, exact masking, every switch."""

import pytest
import torch

from stlser.config import NetworkConfig
from stlser.model import STLSER, count_parameters, parameter_table


def test_default_parameter_counts_near_paper():
    # Paper: 356 K without STL, 468 K with 5 layers.
    n0 = count_parameters(STLSER(NetworkConfig(stl_layers=0), 40, 4))
    n5 = count_parameters(STLSER(NetworkConfig(stl_layers=5), 40, 4))
    assert n0 == 358_292
    assert n5 == 468_612
    assert abs(n0 - 356_000) / 356_000 < 0.01 and abs(n5 - 468_000) / 468_000 < 0.01
    table = parameter_table(STLSER(NetworkConfig(), 40, 4))
    assert table["stl"] == 5 * 22_064 and table["total"] == n5


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"stl_layers": 0},
        {"aggregation": "last"},
        {"aggregation": "attention"},
        {"aggregation": "mean"},
        {"stl_over": "sequence"},
        {"stl_over": "sequence", "aggregation": "attention"},
    ],
)
def test_padded_batch_equals_one_by_one(kw):
    torch.manual_seed(0)
    m = STLSER(NetworkConfig(**kw), 40, 4).eval()
    lens = torch.tensor([317, 180, 41, 26])
    x = torch.randn(4, 317, 40)
    with torch.no_grad():
        batched = m(x, lens)
        single = torch.cat([m(x[i : i + 1, : lens[i]], lens[i : i + 1]) for i in range(4)])
        # garbage in the padding must not matter either
        x2 = x.clone()
        for i, n in enumerate(lens):
            x2[i, n:] = 1e3
        garbage = m(x2, lens)
    assert batched.shape == (4, 4)
    assert torch.allclose(batched, single, atol=1e-5)
    assert torch.allclose(batched, garbage, atol=1e-5)


def test_embeddings_shapes_and_stl_changes_them():
    m = STLSER(NetworkConfig(), 40, 7).eval()
    e = m.embed(torch.randn(2, 100, 40), torch.tensor([100, 60]))
    assert e["z0"].shape == (2, 48) and e["zL"].shape == (2, 48)
    assert not torch.allclose(e["z0"], e["zL"])
    m0 = STLSER(NetworkConfig(stl_layers=0), 40, 7).eval()
    e0 = m0.embed(torch.randn(2, 100, 40), torch.tensor([100, 60]))
    assert torch.equal(e0["z0"], e0["zL"])


def test_bad_switches_raise():
    with pytest.raises(ValueError, match="aggregation"):
        STLSER(NetworkConfig(aggregation="max"), 40, 4)
    with pytest.raises(ValueError, match="stl_over"):
        STLSER(NetworkConfig(stl_over="both"), 40, 4)
    with pytest.raises(ValueError, match="divisible"):
        STLSER(NetworkConfig(stl_heads=5), 40, 4)


def test_gradients_reach_every_parameter():
    m = STLSER(NetworkConfig(), 40, 4)
    out = m(torch.randn(3, 120, 40), torch.tensor([120, 90, 50]))
    out.sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []
