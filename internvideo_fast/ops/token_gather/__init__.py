"""Token gather and scatter: keep the visible tokens of a masked video, and put tokens back in place.

    gather_tokens(x [B, N, D], ids [B, n])               -> out [B, n, D],  out[b, i] = x[b, ids[b, i]]
    scatter_tokens(x [B, n, D], ids [B, n], num_tokens)  -> out [B, N, D],  out[b, ids[b, i]] = x[b, i],
                                                            rows that no id names are zero

With `ids_keep` from :func:`tube_mask`, ``gather_tokens(tokens, ids_keep)`` is the official
``tokens[~mask].reshape(B, -1, D)`` without its host sync (the boolean index needs the count on the host).
Ids must not repeat within a sample (tube masks never do), so each op is the other's backward and both
backwards are deterministic copies, never atomic adds.

Range checks: an id outside ``[0, N)`` is a ``ValueError`` on CPU (always) and on CUDA when
``check_ids=True`` (a host sync, so off by default there). Unchecked on CUDA, the kernel skips such a row
rather than touching memory it does not own.
"""

from internvideo_fast.ops.token_gather.interface import gather_tokens, scatter_tokens
from internvideo_fast.ops.token_gather.reference import OP_NAME, gather_tokens_ref, scatter_tokens_ref

__all__ = ["OP_NAME", "gather_tokens", "gather_tokens_ref", "scatter_tokens", "scatter_tokens_ref"]
