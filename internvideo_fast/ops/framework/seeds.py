"""Seeds for the ops that draw random numbers (counter-based Philox: tube_mask, dropout).

Each such op takes its seed as a one-element int64 tensor on the device it runs on: the kernel reads it
there, so there is no host sync, a CUDA graph can replay with a new value written into the same tensor, and
torch.compile does not specialise on the value. Users may also pass an int or None."""

from __future__ import annotations

import torch


def seed_tensor(
    seed: int | torch.Tensor | None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`seed` as a 0-dim int64 tensor on `device` (default: the seed tensor's device, else the CPU).

    None draws 64 random bits from `generator`; without one, from `device`'s default generator, as a tensor
    on that device: no host sync, no data-dependent Python value under torch.compile, and inside a CUDA
    graph every replay draws anew (a value drawn on the host would be frozen into the graph). Ints in
    [-2**63, 2**64) keep their 64 bits (values >= 2**63 wrap to int64)."""
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64 or seed.numel() != 1:
            raise ValueError(f"seed must be an int or a one-element int64 tensor, got {seed.dtype} {tuple(seed.shape)}")
        wanted = torch.device(device) if device is not None else seed.device
        if wanted.type != seed.device.type or wanted.index not in (None, seed.device.index):
            raise ValueError(f"seed is on {seed.device} but the op runs on device {wanted}")
        return seed.reshape(())
    if seed is None and generator is None:
        return torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64, device=device)
    if seed is None:
        seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64, generator=generator))
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, a one-element int64 tensor or None, got {type(seed).__name__}")
    elif not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must fit in 64 bits, got {seed}")
    if seed >= 2**63:
        seed -= 2**64  # the same 64 bits, as int64
    # A fill kernel takes the value as an argument: no host-to-device copy, which from pageable memory would
    # synchronize the stream on every dropout call (seen as a sync per call in GPU profiles).
    return torch.full((), seed, dtype=torch.int64, device=device)
