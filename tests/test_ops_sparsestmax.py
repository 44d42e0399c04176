"""Sparsemax / SparsestMax against independent computations.

Every test runs twice: with the library op ``torch.ops.mmnorm.sparsestmax``
(the kernel backends) and with the rounds in plain tensor ops (export and
the composed path), switched by the kernel switch."""
import pytest
import torch
from torch.library import opcheck

from mmnorm.ops import _kernel, dispatch
from mmnorm.ops.sparsestmax import sparsemax, sparsestmax

LIBRARY = _kernel.get() is not None


@pytest.fixture(autouse=True, params=['library_op', 'plain_rounds'])
def implementation(request, monkeypatch):
    if request.param == 'library_op':
        if not LIBRARY:
            pytest.skip('the compiled library did not load')
        expected = dispatch.CPU_KERNEL
    else:
        monkeypatch.setattr(_kernel, 'ENABLED', False)
        expected = dispatch.COMPOSED
    assert dispatch.backend_for(torch.zeros(1)) == expected
    return request.param


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


def _reference_sparsemax(z):
    """The host-side projection mmnorm used before (support size read
    back, then one threshold)."""
    sorted_z, _ = torch.sort(z, descending=True)
    cumsum = sorted_z.cumsum(0)
    ks = torch.arange(1, z.numel() + 1, dtype=z.dtype)
    k = int((1 + ks * sorted_z > cumsum).sum())
    return (z - (cumsum[k - 1] - 1) / k).clamp(min=0)


def _reference_sparsestmax(z, radius, available=None):
    """The recursive host-side SparsestMax mmnorm used before, with the
    unavailable branches dropped by ``nonzero`` as the SSN layer did."""
    if available is not None:
        index = torch.nonzero(available).flatten()
        sub = _reference_sparsestmax(z[index], radius)
        return torch.zeros_like(z).index_put((index,), sub)
    w = _reference_sparsemax(z)
    remaining_sq = float(radius) ** 2
    centre_prev = None
    while True:
        support = w > 0
        size = int(support.sum())
        if size == 1:
            return w
        centre = support.to(w.dtype) / size
        if centre_prev is not None:
            remaining_sq -= float((centre - centre_prev).square().sum())
        if remaining_sq <= 0:
            return w
        r = remaining_sq ** 0.5
        offset = w - centre
        dist = offset.norm()
        if dist >= r:
            return w
        if dist < 1e-6:
            direction = torch.zeros_like(w)
            direction[int(torch.nonzero(support)[0])] = 1.0
            offset = direction - centre
            dist = offset.norm()
        pushed = centre + offset * (r / dist)
        pushed = pushed + (1 - pushed.sum()) * centre
        if bool((pushed >= 0).all()):
            return pushed
        w = _reference_sparsemax(pushed)
        centre_prev = centre


def _random_cases(k, count, generator):
    """Logits of several scales, with ties and uniform vectors mixed in,
    and radii over [0, 1.2] with the exact corners 0 and sqrt(2/3)."""
    for i in range(count):
        scale = (0.05, 0.5, 2.0)[i % 3]
        z = torch.randn(k, dtype=torch.float64, generator=generator) * scale
        if i % 7 == 0:
            z = torch.full((k,), float(z[0]), dtype=torch.float64)
        elif i % 5 == 0:
            z[1] = z[0]  # a tie between two entries
        radius = float(torch.rand((), generator=generator,
                                  dtype=torch.float64)) * 1.2
        if i % 11 == 0:
            radius = (0.0, (2 / 3) ** 0.5)[i % 2]
        yield z, radius


@pytest.mark.parametrize('k', [2, 3, 4, 6])
def test_branch_free_version_equals_the_recursive_reference(k):
    gen = torch.Generator().manual_seed(k)
    support_sizes = set()
    for z, radius in _random_cases(k, 100, gen):
        expected = _reference_sparsestmax(z, radius)
        support_sizes.add(int((expected > 0).sum()))
        torch.testing.assert_close(sparsestmax(z, radius), expected,
                                   rtol=0, atol=1e-12)
        # the radius as a 0-dim tensor gives the same
        torch.testing.assert_close(
            sparsestmax(z, torch.tensor(radius, dtype=torch.float64)),
            expected, rtol=0, atol=1e-12)
    # vertices, inner points and points pushed onto smaller faces alike
    assert support_sizes == set(range(1, k + 1))


def test_masked_entries_equal_the_reference_on_the_available_subset():
    """The (N, C) case of SSN: no IN branch, done with a mask instead of
    indexing the available entries."""
    gen = torch.Generator().manual_seed(5)
    masks = [torch.tensor(m) for m in ([False, True, True],
                                       [True, False, True],
                                       [False, True, False],
                                       [True, True, True])]
    for i, (z, radius) in enumerate(_random_cases(3, 200, gen)):
        mask = masks[i % len(masks)]
        got = sparsestmax(z, radius, mask)
        torch.testing.assert_close(
            got, _reference_sparsestmax(z, radius, mask), rtol=0, atol=1e-12)
        assert bool((got[~mask] == 0).all())


def test_a_batch_of_vectors_equals_one_by_one():
    gen = torch.Generator().manual_seed(9)
    cases = list(_random_cases(3, 60, gen))
    z = torch.stack([c[0] for c in cases])
    mask = torch.tensor([False, True, True])
    for radius in (0.0, 0.3, 0.6, 0.9):
        batch = sparsestmax(z, torch.tensor(radius, dtype=torch.float64),
                            mask)
        for row, got in zip(z, batch):
            torch.testing.assert_close(
                got, _reference_sparsestmax(row, radius, mask),
                rtol=0, atol=1e-12)


def test_float32_agrees_with_the_float64_reference():
    gen = torch.Generator().manual_seed(4)
    for z, radius in _random_cases(3, 100, gen):
        expected = _reference_sparsestmax(z, radius).float()
        got = sparsestmax(z.float(), torch.tensor(radius))
        # both pick the same face; only rounding differs (a random radius
        # is never within float32 rounding of a face boundary here)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_gradients_equal_those_of_the_reference():
    gen = torch.Generator().manual_seed(6)
    for z, radius in _random_cases(3, 120, gen):
        mask = torch.tensor([bool(z[0] > -0.5), True, True])
        a = z.clone().requires_grad_()
        b = z.clone().requires_grad_()
        g = torch.randn(3, dtype=torch.float64, generator=gen)
        (sparsestmax(a, radius, mask) * g).sum().backward()
        ref = _reference_sparsestmax(b, radius, mask)
        if ref.requires_grad:
            (ref * g).sum().backward()
        else:  # pushed out of the centre in a fixed direction: constant
            b.grad = torch.zeros_like(b)
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-9)
        assert torch.isfinite(a.grad).all()


def test_gradcheck_batched_with_a_mask():
    z = torch.tensor([[1.2, 1.0, 0.9], [0.2, 0.9, 0.3], [0.3, 0.1, 0.2]],
                     dtype=torch.float64, requires_grad=True)
    for radius, mask in ((0.2, None), (0.6, torch.tensor([False, True, True])),
                         (0.45, torch.tensor([True, True, False]))):
        assert torch.autograd.gradcheck(
            lambda t, r=radius, m=mask: sparsestmax(
                t, torch.tensor(r, dtype=torch.float64), m), (z,))


def test_the_library_op_passes_opcheck(implementation):
    if implementation != 'library_op':
        pytest.skip('the library op only')
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, 3, generator=gen, requires_grad=True)
    for radius, mask in ((0.3, None), (0.7, torch.tensor([False, True, True])),
                         (0.0, torch.tensor([True, True, True]))):
        opcheck(torch.ops.mmnorm.sparsestmax, (z, torch.tensor(radius), mask))


def test_the_library_op_equals_the_plain_rounds_forward_and_backward(
        implementation):
    from mmnorm.ops.sparsestmax import _available_mask, _sparsestmax_rounds
    if implementation != 'library_op':
        pytest.skip('compares the two implementations')
    gen = torch.Generator().manual_seed(11)
    for trial in range(200):
        z = torch.randn(2, 3, dtype=torch.float64, generator=gen) * (
            3 * torch.rand((), dtype=torch.float64, generator=gen))
        if trial % 10 == 0:
            z[0] = z[0, 0]  # uniform lambdas: the tie direction
        radius = 1.1 * torch.rand((), dtype=torch.float64, generator=gen)
        mask = None if trial % 3 else torch.tensor([trial % 2 == 0, True,
                                                    True])
        a = z.clone().requires_grad_()
        b = z.clone().requires_grad_()
        got = torch.ops.mmnorm.sparsestmax(a, radius, mask)
        want = _sparsestmax_rounds(b, radius, _available_mask(b, mask))
        assert torch.equal(got, want)
        g = torch.randn(2, 3, dtype=torch.float64, generator=gen)
        got.backward(g)
        want.backward(g)
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)


def test_second_derivatives_are_refused_when_taken(implementation):
    if implementation != 'library_op':
        pytest.skip('the library op only')
    z = torch.tensor([1.2, 1.0, 0.9], requires_grad=True)
    (grad,) = torch.autograd.grad((sparsestmax(z, 0.3) ** 2).sum(), z,
                                  create_graph=True)
    with pytest.raises(RuntimeError, match='second derivatives'):
        grad.sum().backward()
