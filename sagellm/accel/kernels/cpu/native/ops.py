"""Row-wise ops through the native kernels (``elementwise.cpp``): float32 RMSNorm and rotary embedding,
and the write of new tokens' K/V rows into their cache slots.

Each replaces a chain of 5-10 small torch ops with one pass. Rotary rounds exactly like LMDeploy's
default (``x * cos + rotate_half(x) * sin``, two roundings); RMSNorm's sum of squares adds in
another order than torch's reduction, so it can differ from it in the last bit.
"""

from __future__ import annotations

import torch

from sagellm.accel.kernels.cpu.native import NativeKernels


def rows_supported(*tensors: torch.Tensor) -> bool:
    """float32 CPU tensors whose last dim is contiguous (the only layout the kernels read)."""
    for t in tensors:  # a plain loop: this runs several times per layer per decode step
        if t.dtype != torch.float32 or t.device.type != "cpu" or t.dim() < 1 or t.stride(-1) != 1:
            return False
    return True


def rms_norm_fits(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None) -> bool:
    """Whether :func:`rms_norm` takes these tensors."""
    return (rows_supported(x, weight) and weight.numel() == x.size(-1)
            and (residual is None or (residual.shape == x.shape and rows_supported(residual))))


def rotary_fits(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether :func:`rotary_inplace` takes these tensors."""
    return (x.dim() == 3 and cos.dim() == 2 and cos.shape == sin.shape and cos.shape == (x.size(0), x.size(2))
            and x.size(2) % 2 == 0 and rows_supported(x, cos, sin) and cos.stride(0) == sin.stride(0))


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.size(-1))


def rms_norm(kernels: NativeKernels, x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None, *, check: bool = True):
    """``weight * (h / sqrt(mean(h**2) + eps))`` over the last dim, ``h = x (+ residual)``.

    Returns the normed tensor, or ``(normed, h)`` when ``residual`` is given (LMDeploy's RMSNorm contract).
    ``check=False`` skips :func:`rms_norm_fits` for a caller that just asked it.
    """
    if check and not rms_norm_fits(x, weight, residual):
        raise ValueError(f"rms_norm: x {tuple(x.shape)} {x.dtype}, weight {tuple(weight.shape)}, residual "
                         f"{None if residual is None else tuple(residual.shape)}: float32 CPU tensors with a "
                         "contiguous last dim, weight of the last dim's size; check rms_norm_fits()")
    hidden = x.size(-1)
    rows_x = _rows(x)
    out = torch.empty(x.shape, dtype=torch.float32)
    summed = torch.empty(x.shape, dtype=torch.float32) if residual is not None else None
    rows_res = _rows(residual) if residual is not None else None
    weight = weight.contiguous()
    kernels.rms_norm(
        rows_x.data_ptr(), rows_x.stride(0),
        rows_res.data_ptr() if rows_res is not None else None, rows_res.stride(0) if rows_res is not None else 0,
        weight.data_ptr(), out.data_ptr(), hidden,
        summed.data_ptr() if summed is not None else None, hidden,
        rows_x.size(0), hidden, float(eps),
    )
    return out if residual is None else (out, summed)


def rotary_inplace(kernels: NativeKernels, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                   check: bool = True) -> torch.Tensor:
    """``x = x * cos + rotate_half(x) * sin`` in place; x ``[tokens, heads, dim]``, cos/sin ``[tokens, dim]``.

    ``check=False`` skips :func:`rotary_fits` for a caller that just asked it.
    """
    if check and not rotary_fits(x, cos, sin):
        raise ValueError(f"rotary_inplace: x {tuple(x.shape)} {x.dtype} needs float32 cos/sin [tokens, dim] "
                         f"(dim even, last dims contiguous), got {tuple(cos.shape)} / {tuple(sin.shape)}; "
                         "check rotary_fits()")
    kernels.rotary_inplace(x.data_ptr(), x.stride(0), x.stride(1), x.size(0), x.size(1), x.size(2),
                           cos.data_ptr(), sin.data_ptr(), cos.stride(0))
    return x


def rows_writable(states: torch.Tensor, cache: torch.Tensor) -> bool:
    """Whether :func:`write_rows` takes these: ``states`` [tokens, heads, dim] and the cache
    [blocks, block_size, heads, dim] of one dtype, each token's [heads, dim] contiguous in both."""
    return (states.dim() == 3 and cache.dim() == 4 and states.dtype == cache.dtype and states.shape[1:] == cache.shape[2:]
            and states.device.type == "cpu" and cache.device.type == "cpu"
            and states.stride(2) == 1 and states.stride(1) == states.size(2)
            and cache.stride(3) == 1 and cache.stride(2) == cache.size(3))


def write_rows(kernels: NativeKernels, states: torch.Tensor, cache: torch.Tensor, slots: torch.Tensor, *,
               check: bool = True) -> None:
    """``cache`` slot ``slots[t]`` (block ``slot // block_size``, offset ``slot % block_size``) = ``states[t]``.

    ``slots`` must be int64, contiguous, one per token and inside the cache (the caller checks that
    once per step, see ``token_slots_checked``): the kernel does not bound-check. ``check=False``
    skips the layout check for a caller that just asked :func:`rows_writable`.
    """
    if check and (not rows_writable(states, cache) or slots.dtype != torch.int64 or not slots.is_contiguous()
                  or slots.numel() != states.size(0)):
        raise ValueError(f"write_rows: states {tuple(states.shape)} {states.dtype}, cache {tuple(cache.shape)} "
                         f"{cache.dtype}, slots {tuple(slots.shape)} {slots.dtype}; check rows_writable()")
    size = states.element_size()
    kernels.write_rows(states.data_ptr(), states.stride(0) * size, cache.data_ptr(), cache.stride(0) * size,
                       cache.stride(1) * size, slots.data_ptr(), states.size(0), cache.size(1),
                       states.size(1) * states.size(2) * size)


def token_slots_checked(slots: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """``slots`` as contiguous int64, after checking every one lies inside ``cache``'s blocks.

    Raises:
        ValueError: a slot outside ``[0, blocks * block_size)``.
    """
    slots = slots.to(torch.int64).contiguous()
    capacity = cache.size(0) * cache.size(1)
    if slots.numel() and not (0 <= int(slots.min()) and int(slots.max()) < capacity):
        raise ValueError(f"cache slots {int(slots.min())}..{int(slots.max())} outside the cache's {capacity}")
    return slots
