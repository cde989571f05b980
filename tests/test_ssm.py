"""The chunked SSD scan (models/ssd.py) is the Mamba-2 recurrence: values and gradients equal the sequential scan."""
import pytest
import torch

from lrm_mup.models.ssd import segsum, ssd_chunked, ssd_sequential


def inputs(b=2, length=37, heads=4, p=3, groups=2, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = dict(dtype=torch.float64)
    x = torch.randn(b, length, heads, p, generator=g, **d)
    dt = torch.rand(b, length, heads, generator=g, **d) * 0.5 + 0.01  # positive, as after softplus
    A = -(torch.rand(heads, generator=g, **d) * 3 + 0.1)
    B = torch.randn(b, length, groups, n, generator=g, **d)
    C = torch.randn(b, length, groups, n, generator=g, **d)
    state = torch.randn(b, heads, p, n, generator=g, **d)
    return x, dt, A, B, C, state


def test_segsum_is_the_causal_sum_of_log_decays():
    a = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    s = segsum(a)
    for i in range(4):
        for j in range(4):
            expect = a[j + 1:i + 1].sum().item() if j <= i else float("-inf")
            assert s[i, j].item() == pytest.approx(expect, abs=1e-15)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("chunk,length", [(8, 37), (16, 32), (64, 37), (1, 5)])
def test_chunked_scan_equals_sequential_scan_values_and_final_state(with_state, chunk, length):
    x, dt, A, B, C, state = inputs(length=length)
    init = state if with_state else None
    y, final = ssd_chunked(x, dt, A, B, C, chunk, init)
    y_ref, final_ref = ssd_sequential(x, dt, A, B, C, init)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_scan_gradients_equal_sequential_scan_gradients(with_state):
    tensors = inputs(length=21)
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    grads = []
    for scan in ("chunked", "sequential"):
        for t in leaves:
            t.grad = None
        x, dt, A, B, C, state = leaves
        init = state if with_state else None
        y, final = (ssd_chunked(x, dt, A, B, C, 8, init) if scan == "chunked"
                    else ssd_sequential(x, dt, A, B, C, init))
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=y.dtype)
        v = torch.randn(final.shape, generator=torch.Generator().manual_seed(6), dtype=y.dtype)
        ((y * w).sum() + (final * v).sum()).backward()
        grads.append([t.grad.clone() for t in leaves[:5 + with_state]])
    for name, a, b in zip("x dt A B C state".split(), *grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_a_state_carried_across_two_calls_equals_one_call():
    x, dt, A, B, C, _ = inputs(length=40)
    y, final = ssd_chunked(x, dt, A, B, C, 16)
    y1, s1 = ssd_chunked(x[:, :24], dt[:, :24], A, B[:, :24], C[:, :24], 16)
    y2, s2 = ssd_chunked(x[:, 24:], dt[:, 24:], A, B[:, 24:], C[:, 24:], 16, s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s2, final, rtol=1e-10, atol=1e-10)


def test_bad_shapes_fail_with_the_expected_layout():
    x, dt, A, B, C, _ = inputs()
    with pytest.raises(ValueError, match="groups dividing heads"):
        ssd_chunked(x, dt, A, B[:, :, :1].expand(-1, -1, 3, -1), C[:, :, :1].expand(-1, -1, 3, -1), 8)
