"""When a tuning candidate's output agrees with the default's: within rounding, with the same non-finite
values (see :func:`disagreement`). The tuner (:mod:`.autotuning`) drops candidates that disagree."""

from __future__ import annotations

import torch

# Candidates differ from the default by summation order (tiles, split keys, atomics) and by where they round
# to 16 bits, which moves an element by about one bf16 ulp (2^-8 relative); a wrong index, an unwritten
# tile or a different dropout mask moves it by its own size.
AGREEMENT_RTOL = 2.0**-5
AGREEMENT_ATOL = 2.0**-6  # times the default's largest finite magnitude in that tensor


def disagreement(reference: torch.Tensor, candidate: torch.Tensor, chunk: int = 1 << 22) -> str | None:
    """Why `candidate` does not match `reference` within the tuners' tolerance, or None when it does.

    Non-finite values must match exactly (NaN where the reference has NaN, the same infinities), so an
    element left at its NaN poison fails. Compared `chunk` elements at a time: the fp32 temporaries stay
    small beside a training job's tensors."""
    if candidate.shape != reference.shape or candidate.dtype != reference.dtype:
        return (f"{tuple(candidate.shape)} {candidate.dtype} against "
                f"{tuple(reference.shape)} {reference.dtype}")
    ref_all, got_all = reference.reshape(-1), candidate.reshape(-1)
    chunks = [(start, min(start + chunk, ref_all.numel())) for start in range(0, ref_all.numel(), chunk)]
    if not reference.is_floating_point():
        mismatched = sum(int((got_all[a:b] != ref_all[a:b]).sum()) for a, b in chunks)
        return f"{mismatched} of {ref_all.numel()} elements differ" if mismatched else None
    scale = max((float(ref_all[a:b].float().nan_to_num(0.0, 0.0, 0.0).abs().max()) for a, b in chunks),
                default=0.0)
    nonfinite = beyond = 0
    worst_error = worst_value = 0.0
    for a, b in chunks:
        ref, got = ref_all[a:b].float(), got_all[a:b].float()
        finite = torch.isfinite(ref)
        same_nonfinite = (got == ref) | (got.isnan() & ref.isnan())
        nonfinite += int((~torch.where(finite, torch.isfinite(got), same_nonfinite)).sum())
        error = torch.where(finite, (got - ref).abs(), 0.0).nan_to_num(nan=0.0, posinf=0.0)
        excess = error - (AGREEMENT_RTOL * torch.where(finite, ref.abs(), 0.0) + AGREEMENT_ATOL * scale)
        beyond += int((excess > 0).sum())
        worst = int(excess.argmax())
        if float(excess[worst]) > 0.0 and float(error[worst]) > worst_error:
            worst_error, worst_value = float(error[worst]), float(ref[worst])
    if nonfinite:
        return (f"{nonfinite} of {ref_all.numel()} elements are non-finite where the default's are not, "
                "or differ")
    if beyond:
        return (f"{beyond} of {ref_all.numel()} elements differ beyond rounding, the worst by "
                f"{worst_error:.3g} at {worst_value:.3g} (largest magnitude {scale:.3g})")
    return None
