"""Sparsemax / SparsestMax against independent computations."""
import pytest
import torch

from mmnorm.ops.sparsestmax import sparsemax, sparsestmax


def _project_by_bisection(z):
    """Simplex projection: w = max(z - tau, 0) with sum(w) = 1."""
    lo, hi = z.min() - 1, z.max()
    for _ in range(200):
        tau = (lo + hi) / 2
        if (z - tau).clamp(min=0).sum() > 1:
            lo = tau
        else:
            hi = tau
    return (z - (lo + hi) / 2).clamp(min=0)


@pytest.mark.parametrize('k', [2, 3, 5])
def test_sparsemax_is_the_simplex_projection(k):
    for _ in range(20):
        z = torch.randn(k, dtype=torch.float64) * 2
        torch.testing.assert_close(sparsemax(z), _project_by_bisection(z))


@pytest.mark.parametrize('radius,expected', [
    (0.2, [0.5, 0.3, 0.2]),
    (0.6, [0.81, 0.19, 0.0]),
    (0.82, [1.0, 0.0, 0.0]),
])
def test_published_example(radius, expected):
    w = sparsestmax(torch.tensor([1.2, 1.0, 0.9], dtype=torch.float64),
                    radius)
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64),
                               atol=5e-3, rtol=0)


def test_outputs_lie_on_simplex_and_outside_the_circle():
    torch.manual_seed(1)
    for _ in range(200):
        z = torch.randn(3, dtype=torch.float64)
        r = float(torch.rand(()))
        w = sparsestmax(z, r)
        assert w.min() >= 0 and abs(float(w.sum()) - 1) < 1e-9
        support = w > 0
        centre = support.double() / support.sum()
        # a vertex, or at least the radius from the centre of the face of
        # the plain projection's support (radius shrinks on smaller faces)
        if int(support.sum()) > 1 and bool((sparsemax(z) > 0).eq(
                support).all()):
            assert float((w - centre).norm()) >= r - 1e-9


def test_one_hot_beyond_sqrt_two_thirds():
    torch.manual_seed(2)
    for _ in range(100):
        w = sparsestmax(torch.randn(3), 0.8166)
        assert int((w > 0).sum()) == 1


def test_uniform_lambda_with_positive_radius_is_finite_and_deterministic():
    for r in (1e-3, 0.3, 0.7):
        w = sparsestmax(torch.ones(3), r)
        assert torch.isfinite(w).all()
        assert abs(float(w.sum()) - 1) < 1e-6
        torch.testing.assert_close(w, sparsestmax(torch.ones(3), r))


def test_gradcheck_at_generic_points():
    for z, r in ((torch.tensor([1.2, 1.0, 0.9]), 0.2),
                 (torch.tensor([1.2, 1.0, 0.9]), 0.6),
                 (torch.tensor([0.3, 0.1, 0.2]), 0.1)):
        z = z.double().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda t, r=r: sparsestmax(t, r), (z,))


def test_negative_radius_is_refused():
    with pytest.raises(ValueError, match='radius'):
        sparsestmax(torch.ones(3), -0.1)
