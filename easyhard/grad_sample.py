"""Per-example gradients layer by layer, contracted over noise multiplicity K inside each example.

DP-SGD with noise multiplicity clips the gradient of each example's loss *averaged over its K noise
draws*. The network sees ``R = K * B`` rows, *draw-major* (the contract of
:mod:`easyhard.multiplicity`: row ``k * B + b`` is draw ``k`` of example ``b``, so ``[R, ...]``
activations view as ``[K, B, ...]`` without a copy). For
every parametrised layer we save its input activation ``a`` in the forward pass and the gradient
``g`` of the summed loss with respect to its output in the backward pass; since rows of different
examples never interact (GroupNorm and attention act within one row), example ``b``'s gradient is
the layer's weight-gradient formula applied to rows ``b, B + b, ..., (K - 1) B + b`` only:

* ``Linear``: ``dW_b = sum_{k, positions} g a^T`` (one ``einsum``), ``db_b = sum g``;
* ``Conv2d``: the weight gradient of a grouped convolution with the B examples as groups and the K
  draws as the batch (``torch.nn.grad.conv2d_weight`` on the ``[K, B * C, H, W]`` view), so the sum
  over K and positions happens inside the native kernel and nothing is unfolded;
* ``GroupNorm``: ``dgamma_b = sum g * x_hat``, ``dbeta_b = sum g``;
* ``Embedding``: per-example scatter-add of ``g`` into the looked-up rows.

During that backward every parameter has ``requires_grad=False``, so autograd computes only the
activation gradients and never the batch weight gradients we would throw away. The result has one
``[B, *p.shape]`` tensor per parameter, B*P floats in all (not B*K*P). Any other module that holds
trainable parameters raises :class:`UnsupportedLayerError` naming it: nothing is skipped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from easyhard.multiplicity import draws_view


class UnsupportedLayerError(TypeError):
    """A module with trainable parameters has no per-example gradient rule here."""


def parametrised_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules that directly own trainable parameters; raises on an unsupported type."""
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if not isinstance(module, SUPPORTED):
            raise UnsupportedLayerError(
                f"per-example gradients: module '{name}' ({type(module).__name__}) has trainable "
                f"parameters but no layer-wise rule (supported: "
                f"{', '.join(t.__name__ for t in SUPPORTED)}); use grad_sampler='vmap' or freeze it"
            )
        yield name, module


@contextmanager
def _capture(model: nn.Module, batch: int, grads: dict[str, Tensor]) -> Iterator[None]:
    """Accumulate per-example gradients into ``grads`` during the next backward pass.

    Each parametrised module keeps its input from the forward pass; when its output gradient
    arrives in the backward pass, its per-example gradients are formed at once and the input is
    released, so no more than one layer's extra tensors live at a time. Parameters are frozen
    meanwhile, so autograd computes activation gradients only.
    """
    modules = list(parametrised_modules(model))
    names = {p: k for k, p in model.named_parameters() if p.requires_grad}
    frozen = [p for _, m in modules for p in m.parameters(recurse=False) if p.requires_grad]
    handles = []

    def accumulate(module: nn.Module, a: Tensor, g: Tensor) -> None:
        # under bf16 autocast a and g are bf16: form per-example gradients in the parameters' dtype
        dtype = next(module.parameters()).dtype
        if a.is_floating_point():
            a = a.to(dtype)
        g = g.to(dtype)
        for pname, value in _rule(module)(module, a, g, batch).items():
            key = names[getattr(module, pname)]
            grads[key] = grads[key] + value if key in grads else value

    def forward_hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        saved = [args[0].detach()]
        if not output.requires_grad:
            # Parameters are frozen: a layer fed only by constants (the class and time
            # embeddings, the first convolution) would otherwise drop out of the graph.
            output = output.detach().requires_grad_(True)

        def on_grad(g: Tensor) -> None:
            accumulate(module, saved.pop(), g.detach())

        output.register_hook(on_grad)
        return output

    try:
        for _, module in modules:
            handles.append(module.register_forward_hook(forward_hook))
        for p in frozen:
            p.requires_grad_(False)
        yield
    finally:
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(True)


def _linear(m: nn.Linear, a: Tensor, g: Tensor, batch: int) -> dict[str, Tensor]:
    rows = a.shape[0]
    a3 = a.reshape(rows, -1, a.shape[-1])  # [K*B, positions, in]
    g3 = g.reshape(rows, -1, g.shape[-1])
    # one [out, in] product per row (batched, on the draw-major rows as they are), then sum the
    # K rows of each example: no permuted copies of the activations
    per_row = torch.bmm(g3.transpose(1, 2), a3)  # [K*B, out, in]
    out = {"weight": draws_view(per_row, batch).sum(0)}
    if m.bias is not None:
        out["bias"] = draws_view(g3.sum(1), batch).sum(0)
    return out


def _conv2d(m: nn.Conv2d, a: Tensor, g: Tensor, batch: int) -> dict[str, Tensor]:
    # Examples become groups of a grouped convolution whose batch is the K draws: the native
    # weight-gradient kernel then sums over draws and positions for every example at once.
    k = a.shape[0] // batch
    cin, cout = a.shape[1], g.shape[1]
    a_g = draws_view(a, batch).reshape(k, batch * cin, *a.shape[2:])
    g_g = draws_view(g, batch).reshape(k, batch * cout, *g.shape[2:])
    w = torch.nn.grad.conv2d_weight(
        a_g,
        (batch * cout, cin // m.groups, *m.kernel_size),
        g_g,
        stride=m.stride,
        padding=m.padding,
        dilation=m.dilation,
        groups=batch * m.groups,
    )
    out = {"weight": w.reshape(batch, cout, cin // m.groups, *m.kernel_size)}
    if m.bias is not None:
        out["bias"] = draws_view(g, batch).sum((0, 3, 4))
    return out


def _group_norm(m: nn.GroupNorm, a: Tensor, g: Tensor, batch: int) -> dict[str, Tensor]:
    x_hat = F.group_norm(a, m.num_groups, None, None, m.eps)
    dims = (0, *range(3, g.dim() + 1))  # draws and positions, keep examples and channels
    out = {}
    if m.weight is not None:
        out["weight"] = draws_view(x_hat.mul_(g), batch).sum(
            dims
        )  # x_hat is ours: reuse its memory
    if m.bias is not None:
        out["bias"] = draws_view(g, batch).sum(dims)
    return out


def _embedding(m: nn.Embedding, a: Tensor, g: Tensor, batch: int) -> dict[str, Tensor]:
    idx = draws_view(a, batch).reshape(-1, batch).T  # [B, K*L]
    gg = draws_view(g, batch).reshape(-1, batch, g.shape[-1]).transpose(0, 1)  # [B, K*L, D]
    w = torch.zeros(batch, m.num_embeddings, m.embedding_dim, dtype=g.dtype, device=g.device)
    w.scatter_add_(1, idx.unsqueeze(-1).expand_as(gg), gg)
    return {"weight": w}


_RULES: dict[type, Callable[..., dict[str, Tensor]]] = {
    nn.Linear: _linear,
    nn.Conv2d: _conv2d,
    nn.GroupNorm: _group_norm,
    nn.Embedding: _embedding,
}
SUPPORTED = tuple(_RULES)  # parametrised layer types with a per-example rule


def _rule(module: nn.Module) -> Callable[..., dict[str, Tensor]]:
    for tp, fn in _RULES.items():
        if isinstance(module, tp):
            return fn
    raise UnsupportedLayerError(type(module).__name__)


def layerwise_grads(loss_module: nn.Module, *batch: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Per-example gradients ``{name: [B, *shape]}`` and losses ``[B]`` of ``loss_module(*batch)``.

    ``loss_module`` returns one loss per example (shape ``[B]``); inside, each example may expand
    into K rows (its noise draws), laid out draw-major (row ``k * B + b``). Parameters
    without a gradient path get zeros, as ``torch.func`` would give.
    """
    n = len(batch[0])
    params = {k: p for k, p in loss_module.named_parameters() if p.requires_grad}
    grads: dict[str, Tensor] = {}
    with _capture(loss_module, n, grads):
        losses = loss_module(*batch)
        if losses.shape != (n,):
            raise ValueError(
                f"loss_module must return one loss per example, got {tuple(losses.shape)}"
            )
        if losses.requires_grad:
            losses.sum().backward()
    for key, p in params.items():
        if key not in grads:
            grads[key] = torch.zeros(n, *p.shape, dtype=p.dtype, device=p.device)
    return {key: grads[key] for key in params}, losses.detach()
