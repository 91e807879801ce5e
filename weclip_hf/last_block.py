"""The last CLIP block as GradCAM needs it (DESIGN Part 1, CAM steps 1-2): run once per image, the class
gradients of all (image, class) pairs from one backward.

GradCAM uses, per pair, only the mean over patch tokens of the gradient w.r.t. the block's first LayerNorm
output (its channel weights). That sum over patches is the gradient w.r.t. one shift vector added to every
patch token of that output, and the output enters the block only through the query, key and value
projections. So:

1. `run_last_block` runs the block once per image, without autograd, keeping what the backward needs;
2. `pair_block_outputs` replays the block output of each pair's image as a function of a zero shift [P, D]
   (the only leaf): `_ShiftedBlock`'s forward copies the saved output, its backward is the block's own
   (MLP, output projection, attention, input projections), written out so that nothing of the forward is
   recomputed and the input projections see the patch-summed gradient only.

The per-pair work is then one backward without the query/key/value projections' per-token part, instead of
a forward and a backward of a whole block copy per pair; the result equals the per-pair autograd path up to
float32 summation order (`tests/test_pseudo_labels.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .clip_layers import attention_heads, attention_probabilities


@dataclass
class LastBlockPass:
    """One image-batched pass of the last CLIP block (float32, no autograd) and what its backward needs."""

    layer: nn.Module  # the CLIP encoder layer (float32 weights)
    normed_input: torch.Tensor  # [B, T, D] output of layer_norm1 (the GradCAM activations)
    probs: torch.Tensor  # [B, H, T, T] attention probabilities
    query: torch.Tensor  # [B, H, T, d]
    key: torch.Tensor  # [B, H, T, d]
    value: torch.Tensor  # [B, H, T, d]
    attended: torch.Tensor  # [B, H, T, d] probs @ value
    mlp_normed: torch.Tensor  # [B, T, D] layer_norm2's normalized input (before its affine part)
    mlp_rstd: torch.Tensor  # [B, T, 1] layer_norm2's 1 / std
    activation_grad: torch.Tensor  # [B, T, M] derivative of the MLP activation at fc1's output
    output: torch.Tensor  # [B, T, D] the block output

    @property
    def attention(self) -> torch.Tensor:
        """Head-averaged attention probabilities [B, T, T]."""
        return self.probs.mean(dim=1)


def _normalized(norm: nn.LayerNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm's normalized input and 1/std over the last dim (before the affine part): ([..., D], [..., 1])."""
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
    rstd = torch.rsqrt(var + norm.eps)
    return (x - mean) * rstd, rstd


@torch.no_grad()
def run_last_block(layer: nn.Module, x: torch.Tensor) -> LastBlockPass:
    """Run a CLIP encoder layer on ``x`` [B, T, D] (float32) with explicit attention, keeping its intermediates.

    Every image runs, also one without a pair: its attention map is still the affinity's last map."""
    attn = layer.self_attn
    h = layer.layer_norm1(x)
    q, k, v = attention_heads(attn, h)
    probs = attention_probabilities(attn, q, k)
    attended = probs @ v
    x1 = x + attn.out_proj(attended.transpose(1, 2).flatten(2))
    normed, rstd = _normalized(layer.layer_norm2, x1)
    z = layer.mlp.fc1(layer.layer_norm2(x1))
    with torch.enable_grad():  # the activation's derivative, whatever the activation (elementwise)
        z_leaf = z.detach().requires_grad_(True)
        activated = layer.mlp.activation_fn(z_leaf)
        (activation_grad,) = torch.autograd.grad(activated.sum(), z_leaf)
    output = x1 + layer.mlp.fc2(activated.detach())
    return LastBlockPass(layer, h, probs, q, k, v, attended, normed, rstd, activation_grad, output)


def _layer_norm_backward(norm: nn.LayerNorm, normed: torch.Tensor, rstd: torch.Tensor, grad: torch.Tensor):
    """Gradient w.r.t. a LayerNorm's input from the gradient w.r.t. its output: all [..., D]."""
    g = grad * norm.weight
    return rstd * (g - g.mean(-1, keepdim=True) - normed * (g * normed).mean(-1, keepdim=True))


def _shift_gradient(
    block: LastBlockPass, pair_image: torch.Tensor, slots: tuple[torch.Tensor, int], grad_output: torch.Tensor
) -> torch.Tensor:
    """Gradient w.r.t. a shift added to every patch token of layer_norm1's output, per pair: [P, D].

    Args: grad_output: [P, T, D] gradient w.r.t. the block output of each pair (pairs of image
    ``pair_image``); slots: each pair's rank within its image and the most pairs of one image (a `PairPlan`'s ``slot``, ``max_classes``).
    """
    layer, attn = block.layer, block.layer.self_attn
    p, t, c = grad_output.shape
    # MLP (residual included), then the attention output projection
    grad_hidden = (grad_output @ layer.mlp.fc2.weight) * block.activation_grad[pair_image]
    grad_normed = grad_hidden @ layer.mlp.fc1.weight
    grad_x1 = grad_output + _layer_norm_backward(
        layer.layer_norm2, block.mlp_normed[pair_image], block.mlp_rstd[pair_image], grad_normed
    )
    grad_attended = (
        (grad_x1 @ attn.out_proj.weight).view(p, t, attn.num_heads, attn.head_dim).transpose(1, 2)
    )  # [P,H,T,d]
    # attention backward, summed over the patch tokens (index >= 1) of queries, keys and values; the [H, T, T]
    # maps are read per image (no copy per pair)
    q, k, v = block.query[pair_image], block.key[pair_image], block.value[pair_image]
    attended = block.attended[pair_image]
    patch_mass = block.probs[..., 1:].sum(-1, keepdim=True)[pair_image]  # [P, H, T, 1]: mass on patch keys
    grad_v = (patch_mass * grad_attended).sum(2)  # sum over patch values of probs^T @ grad
    row_term = (grad_attended * attended).sum(-1, keepdim=True)  # [P, H, T, 1]: sum_m P_im dP_im
    # keys: sum over patch keys of dS_im = P_im (g_i . v_m - row_i)
    class_probs = block.probs[..., :1][pair_image]  # [P, H, T, 1]: attention on the class token
    patch_scores = (grad_attended * (attended - class_probs * v[:, :, :1])).sum(-1, keepdim=True)
    grad_k = ((patch_scores - row_term * patch_mass) * q).sum(2) * attn.scale
    # queries: sum over patch queries of dS_nm, for every key m
    moved = _per_image_transposed_product(
        block.probs, pair_image, slots, grad_attended[:, :, 1:], row_term[:, :, 1:]
    )
    column = (moved[..., :-1] * v).sum(-1) - moved[..., -1]
    grad_q = (column.unsqueeze(-1) * k).sum(2) * attn.scale
    return (  # heads concatenated, [P, H, d] -> [P, D], through the input projections
        grad_q.reshape(p, c) @ attn.q_proj.weight
        + grad_k.reshape(p, c) @ attn.k_proj.weight
        + grad_v.reshape(p, c) @ attn.v_proj.weight
    )


def _per_image_transposed_product(
    probs: torch.Tensor,
    pair_image: torch.Tensor,
    slots: tuple[torch.Tensor, int],
    grad: torch.Tensor,
    row: torch.Tensor,
) -> torch.Tensor:
    """``probs[image][:, patch queries]^T @ [grad | row]`` for every pair: [P, H, T, d + 1].

    probs: [B, H, T, T] per image; grad [P, H, N, d] and row [P, H, N, 1] per pair, over the N patch queries.
    The pairs of an image are packed side by side into one right-hand side (zeros for an image's unused slots),
    so each image's maps enter one batched product, read in place."""
    b, heads, t, _ = probs.shape
    rhs = torch.cat([grad, row], dim=-1)  # [P, H, N, d + 1]
    slot, num_slots = slots
    packed = rhs.new_zeros(b, num_slots, *rhs.shape[1:])
    packed[pair_image, slot] = rhs
    width = rhs.shape[-1]
    packed = packed.permute(0, 2, 3, 1, 4).reshape(b, heads, rhs.shape[2], num_slots * width)
    product = probs[:, :, 1:].transpose(-1, -2) @ packed  # [B, H, T, slots * (d + 1)]
    return product.view(b, heads, t, num_slots, width)[pair_image, :, :, slot]


class _ShiftedBlock(torch.autograd.Function):
    """The block output of each pair's image as a function of a shift of its patch tokens after layer_norm1,
    at shift 0: the forward copies the saved output, the backward is `_shift_gradient`."""

    @staticmethod
    def forward(
        ctx,
        shift: torch.Tensor,
        block: LastBlockPass,
        pair_image: torch.Tensor,
        slots: tuple[torch.Tensor, int],
    ) -> torch.Tensor:
        ctx.block, ctx.pair_image, ctx.slots = block, pair_image, slots
        return block.output[pair_image]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        return _shift_gradient(ctx.block, ctx.pair_image, ctx.slots, grad_output), None, None, None


def pair_block_outputs(
    block: LastBlockPass, pair_image: torch.Tensor, slots: tuple[torch.Tensor, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(shift [P, D], outputs [P, T, D])``: the block output of each pair's image, differentiable w.r.t. a
    (zero) shift of its patch tokens after layer_norm1. The gradient of a pair's target w.r.t. ``shift`` is
    the sum over patch tokens of its gradient w.r.t. layer_norm1's output.

    ``slots``: each pair's rank within its image and the most pairs of one image (a `PairPlan`'s ``slot`` and
    ``max_classes``)."""
    shift = block.output.new_zeros(pair_image.shape[0], block.output.shape[-1], requires_grad=True)
    return shift, _ShiftedBlock.apply(shift, block, pair_image, slots)


__all__ = ["LastBlockPass", "run_last_block", "pair_block_outputs"]
