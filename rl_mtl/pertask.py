"""Per-task gradients in one vectorised pass, their Gram matrix, and the write-back of a combined direction.

The batch is laid out ``[K, n, ...]`` and task k's loss depends only on its own rows, so
``vmap(grad(task_loss))`` over the task axis gives all K gradients of the shared parameters with roughly the FLOPs
of one backward pass (architecture §4), instead of K backward passes as the papers' code does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import grad_and_value, vjp, vmap

#: ONE task: ``fn(params, *inputs_k) -> (loss (), aux)`` where each input has the task axis removed
TaskLossFn = Callable[..., tuple[Tensor, Tensor]]


def per_task_gradients(
    fn: TaskLossFn,
    params: dict[str, Tensor],
    inputs: Sequence[Tensor],
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """All K task gradients as one matrix, with the task losses and auxiliary outputs of the same pass.

    fn: one task's ``fn(params, *inputs_k) -> (loss (), aux)``; params: name → tensor (the shared parameters,
    detached); inputs: tensors of leading shape (K, ...). Returns ``G (K, m)`` with the parameters flattened in
    ``params`` order, ``losses (K,)`` and ``aux (K, ...)``. ``chunk_size`` bounds vmap's memory for large K.
    """
    in_dims = (None, *([0] * len(inputs)))
    grads, (losses, aux) = vmap(grad_and_value(fn, has_aux=True), in_dims=in_dims, chunk_size=chunk_size)(
        params, *inputs
    )
    k = losses.shape[0]
    return torch.cat([grads[name].reshape(k, -1) for name in params], dim=1), losses, aux


def gram(G: Tensor) -> Tensor:
    """The task Gram matrix ``G Gᵀ`` (K, K) in float64 (accumulated in G's precision, then widened)."""
    return (G @ G.T).double()


def gradients_and_gram(fn: TaskLossFn, params: dict[str, Tensor], inputs: Sequence[Tensor],
                       trunk_size: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`per_task_gradients` and the :func:`gram` of G's first ``trunk_size`` columns (all of them when 0):
    ``(G, losses, aux, gram)``. One function, so that ``--compile`` captures the whole pass as one graph."""
    G, losses, aux = per_task_gradients(fn, params, inputs)
    return G, losses, aux, gram(G[:, :trunk_size] if trunk_size else G)


def weighted_gradients(fn: TaskLossFn, params: dict[str, Tensor], inputs: Sequence[Tensor], coeffs: Tensor,
                       head_coeffs: Tensor | None = None,
                       num_trunk: int = 0) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """The gradient of ``Σ_k c_k L_k`` (coeffs c (K,), detached) from one vmapped forward and one backward pass,
    without forming the per-task gradients; returns ``(grads by name, losses (K,), aux)``.

    With ``head_coeffs`` h (K,), the parameters after the first ``num_trunk`` (the task heads) get the gradient of
    ``Σ_k h_k L_k`` instead (a second backward pass through the same forward).  The whole pass is one function of
    tensors, so ``--compile`` captures it as one graph.
    """
    in_dims = (None, *([0] * len(inputs)))

    def all_losses(p: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return vmap(fn, in_dims=in_dims)(p, *inputs)

    losses, pullback, aux = vjp(all_losses, params, has_aux=True)
    grads = pullback(coeffs.to(losses))[0]
    if head_coeffs is not None:
        head_grads = pullback(head_coeffs.to(losses))[0]
        grads = {name: grads[name] if i < num_trunk else head_grads[name] for i, name in enumerate(params)}
    return grads, losses, aux


def task_losses(fn: TaskLossFn, params: dict[str, Tensor], inputs: Sequence[Tensor]) -> Tensor:
    """Every task's loss (K,) from one vmapped forward pass without gradients (re-measured after a step)."""
    in_dims = (None, *([0] * len(inputs)))
    with torch.no_grad():
        return vmap(fn, in_dims=in_dims)(params, *inputs)[0]


def write_direction(weights: Tensor, G: Tensor, params: Sequence[nn.Parameter], head_weights: Tensor | None = None,
                    trunk_size: int = 0) -> Tensor:
    """Write ``d = weightsᵀ G`` into each parameter's ``.grad`` (overwriting it; views of d); returns d (m,).

    weights: (K,); G: (K, m) in the order of ``params``.  With ``head_weights`` (K,), only the first ``trunk_size``
    columns use ``weights`` and the rest (the task heads, placed last) use ``head_weights``.
    """
    if head_weights is None:
        d = weights.to(G.dtype) @ G
    else:
        d = torch.cat((weights.to(G.dtype) @ G[:, :trunk_size], head_weights.to(G.dtype) @ G[:, trunk_size:]))
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = d[offset : offset + n].view_as(p)
        offset += n
    if offset != d.numel():
        raise ValueError(f"direction has {d.numel()} entries but the parameters hold {offset}")
    return d


def detached_params(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``name → parameter`` detached, for ``functional_call`` inside ``torch.func`` transforms."""
    return {name: p.detach() for name, p in params.items()}
