"""Eager calls of our Triton custom ops without torch.library's per-call Python cost.

Each Triton op is a ``torch.library.custom_op`` (schema, fake implementation, registered autograd) so that
``torch.compile(fullgraph=True)`` sees it. In eager mode the same call pays for the custom op's Python
dispatch (argument defaults, the dispatcher's autograd and redispatch hops, ``torch._dynamo.disable``
wrappers): ``bench/host_overhead.py`` measures it at a large share of the host time of one
dropout_add_layer_norm forward, and on a GPU host time per call can exceed kernel time (see bench/results).

:func:`eager_op` returns a callable with the op's signature that

- while anything traces the call (torch.compile, AOTAutograd / make_fx, fake tensors, functorch transforms)
  calls the custom op, so graphs keep it;
- otherwise calls the op's Python implementation directly, wrapped in a ``torch.autograd.Function`` built
  from the *same* ``setup_context`` / ``backward`` functions that are registered with the op (only when
  autograd will record it), so both paths run the same kernels and give bitwise-identical results.

``IVF_DISPATCH_CUSTOM_OPS=1`` (read at call time) sends eager calls through the custom ops as well.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode


def _always_dispatch() -> bool:
    return os.environ.get("IVF_DISPATCH_CUSTOM_OPS") == "1"


PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)  # what eager tensors are (not fake / functional)


def _traced(args: tuple) -> bool:
    """Whether a tracer sees this call: torch.compile's Dynamo, a functorch transform, a dispatch mode
    (make_fx / AOTAutograd, FakeTensorMode), or tensor subclasses (fake or functional tensors)."""
    if (
        torch.compiler.is_compiling()
        or torch._C._are_functorch_transforms_active()
        or _get_current_dispatch_mode() is not None
    ):
        return True
    for a in args:  # plain loops: a generator per call costs more host time than these checks
        if isinstance(a, torch.Tensor) and type(a) not in PLAIN_TENSORS:
            return True
    return False


def _records_autograd(args: tuple) -> bool:
    if not torch.is_grad_enabled():
        return False
    for a in args:
        if isinstance(a, torch.Tensor) and a.requires_grad:
            return True
    return False


def eager_op(
    op: Callable[..., Any],
    impl: Callable[..., Any],
    *,
    setup_context: Callable[..., None] | None = None,
    backward: Callable[..., Any] | None = None,
) -> Callable[..., Any]:
    """`op` (a custom op made from `impl`) when compiling, else `impl` with `op`'s autograd formula.

    Positional arguments only (the ops' internal callers use them); missing trailing arguments take
    `impl`'s defaults, as the custom op's schema does."""
    parameters = inspect.signature(impl).parameters.values()
    defaults = tuple(p.default for p in parameters if p.default is not inspect.Parameter.empty)
    arity = len(parameters)

    function = None
    if backward is not None:
        assert setup_context is not None, "an op with a backward needs its setup_context"

        def forward(ctx, *args):
            output = impl(*args)
            setup_context(ctx, args, output)
            return output

        function = type(
            f"{getattr(impl, '__name__', 'op')}_function",
            (torch.autograd.Function,),
            {"forward": staticmethod(forward), "backward": staticmethod(backward)},
        )

    def call(*args):
        if _always_dispatch() or _traced(args):
            return op(*args)
        if len(args) < arity:
            args = args + defaults[len(defaults) - (arity - len(args)):]
        if function is not None and _records_autograd(args):
            return function.apply(*args)
        return impl(*args)

    call.__name__ = getattr(impl, "__name__", "op")
    call.__doc__ = impl.__doc__
    return call
