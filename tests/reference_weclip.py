"""Slow, obviously-correct reference of the WeCLIP pseudo-label path: one image, one class at a time; and of the
decoder: one image, one head at a time.

Written independently of `weclip_hf.cam` / `weclip_hf.par` / `weclip_hf.decoder`, following DESIGN Part 1 step by
step with explicit loops, NumPy and SciPy (connected components), the way the official code runs. The tests
prove the batched implementation equal to it; the benchmark times it as the "slow path".
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from weclip_hf.clip_features import in_float32
from weclip_hf.clip_layers import clip_mlp, eager_attention


def last_block_image_embedding(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``model``'s last CLIP block in float32 with autograd from its first LayerNorm's output (float32 whatever
    the weights' dtype: half-precision weights are upcast for this block).

    Args: x: [P, 1+N, D] input tokens of the last block (detached).
    Returns: (ln1 output [P, 1+N, D] requiring grad — the GradCAM target, L2-normalized image
    embedding [P, E] = proj(mean over patches of post_layernorm(block output)), head-averaged
    attention [P, 1+N, 1+N]).
    """
    layer = in_float32(model.vision_model.encoder.layers[-1])
    post_layernorm, projection = (
        in_float32(model.vision_model.post_layernorm),
        in_float32(model.visual_projection),
    )
    x = x.float()
    h = layer.layer_norm1(x).detach().requires_grad_(True)
    out, probs = eager_attention(layer.self_attn, h)
    y = x + out
    y = y + clip_mlp(layer.mlp, layer.layer_norm2(y))
    pooled = post_layernorm(y)[:, 1:].mean(dim=1)
    return h, F.normalize(projection(pooled), dim=-1), probs.mean(dim=1).detach()


def reference_normalize(cam: np.ndarray) -> np.ndarray:
    cam = cam - cam.min()
    return cam / (1e-7 + cam.max())


def reference_box_mask(cam: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 truncation, int threshold, 8-connected regions, union of clipped bounding boxes."""
    h, w = cam.shape
    cam_u8 = (cam * 255).astype(np.uint8)
    thr = int(threshold * int(cam_u8.max()))
    binary = cam_u8 > thr
    labels, n = ndimage.label(binary, structure=np.ones((3, 3)))
    mask = np.zeros((h, w), dtype=np.float32)
    for region in range(1, n + 1):
        ys, xs = np.nonzero(labels == region)
        y0, x0 = ys.min(), xs.min()
        y1, x1 = min(ys.max() + 1, h - 1), min(xs.max() + 1, w - 1)
        mask[y0:y1, x0:x1] = 1
    return mask


def reference_transition(aff: torch.Tensor) -> torch.Tensor:
    t = aff / aff.sum(dim=0, keepdim=True)
    t = t / t.sum(dim=1, keepdim=True)
    for _ in range(2):
        t = t / t.sum(dim=0, keepdim=True)
        t = t / t.sum(dim=1, keepdim=True)
    t = (t + t.t()) / 2
    return t @ t


def reference_par(image: torch.Tensor, scores: torch.Tensor, dilations, num_iter, w1=0.3, w2=0.01):
    """PAR with one-hot dilated conv kernels, as the official module computes it. image [1,3,H,W]."""
    kernel = torch.zeros(8, 1, 3, 3)
    for n, (r, c) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]):
        kernel[n, 0, r, c] = 1.0

    def neighbours(x):
        b, c, h, w = x.shape
        out = []
        for d in dilations:
            xp = F.pad(x, [d] * 4, mode="replicate").reshape(b * c, 1, h + 2 * d, w + 2 * d)
            out.append(F.conv2d(xp, kernel, dilation=d).view(b, c, -1, h, w))
        return torch.cat(out, dim=2)

    b, _, h, w = image.shape
    nb = neighbours(image)
    diff = (nb - image.unsqueeze(2).repeat(1, 1, nb.shape[2], 1, 1)).abs()
    sd = torch.std(nb, dim=2, keepdim=True)
    aff = (-((diff / (sd + 1e-8) / w1) ** 2)).mean(dim=1, keepdim=True)
    ring = [math.sqrt(2), 1, math.sqrt(2), 1, 1, math.sqrt(2), 1, math.sqrt(2)]
    pos = torch.tensor([d * r for d in dilations for r in ring]).view(1, 1, -1, 1, 1).repeat(b, 1, 1, h, w)
    pos_aff = -((pos / torch.std(pos, dim=2, keepdim=True) / w1) ** 2)
    aff = F.softmax(aff, dim=2) + w2 * F.softmax(pos_aff, dim=2)
    for _ in range(num_iter):
        scores = (neighbours(scores) * aff).sum(2)
    return scores


def reference_pseudo_labels(model, pixel_values, class_labels, use_rfm=False, decoder_affinity=None):
    """Per image, per class: GradCAM -> box -> refine -> normalize -> upsample -> bg -> PAR -> labels.

    Returns dict with per-pair lists (gradcams, box_masks, refined_grid) and pseudo labels [B, H, W].
    """
    cfg = model.config
    clip = model.forward_clip_features(pixel_values, cfg.vision_config.num_hidden_layers - 1)
    hidden, attention, grid = clip.hidden, clip.attention, clip.grid
    gh, gw = grid
    out = {"gradcams": [], "box_masks": [], "refined_grid": [], "pseudo_labels": [], "top2_gaps": []}
    for b in range(pixel_values.shape[0]):
        present = [c for c in range(class_labels.shape[1]) if class_labels[b, c] > 0.5]
        text = torch.cat([model.class_text_embeds[present], model.background_text_embeds])
        # attention maps of all L blocks for this image (the last block's from its own forward)
        h, emb, last = last_block_image_embedding(model, hidden[-1][b : b + 1])
        maps = [a[b, 1:, 1:] for a in attention] + [last[0, 1:, 1:]]
        if use_rfm:
            a_dec = decoder_affinity[b].detach()
            chosen = maps[-cfg.rfm_num_maps :]
            d = [torch.sum(a_dec - m) for m in chosen]
            mean_d = sum(d) / len(d)
            kept = [m for m, dl in zip(chosen, d) if dl <= mean_d]
            aff = sum(kept) / (len(kept) + 1e-5) * a_dec
        else:
            aff = torch.stack(maps[-cfg.attention_num_maps :]).mean(0)
        trans = reference_transition(aff.float())
        cams_up = []
        for c in present:
            h, emb, _ = last_block_image_embedding(model, hidden[-1][b : b + 1])
            probs = (model.logit_scale.exp() * emb @ text.t()).softmax(-1)
            (grad,) = torch.autograd.grad(probs[0, present.index(c)], h)
            acts = h[0, 1:].detach().numpy()  # [N, D]
            g = grad[0, 1:].numpy()
            weights = g.mean(axis=0)
            cam = np.maximum((acts * weights[None]).sum(axis=1), 0).reshape(gh, gw)
            cam = reference_normalize(reference_normalize(cam.astype(np.float32)))
            box = reference_box_mask(cam, cfg.cam_box_threshold)
            masked_trans = trans * torch.from_numpy(box).reshape(1, -1)
            refined = (masked_trans @ torch.from_numpy(cam).reshape(-1, 1)).reshape(gh, gw)
            out["gradcams"].append(cam)
            out["box_masks"].append(box)
            out["refined_grid"].append(refined.numpy())
            norm = torch.from_numpy(reference_normalize(refined.numpy()))
            up = F.interpolate(
                norm[None, None], size=pixel_values.shape[-2:], mode="bilinear", align_corners=False
            )
            cams_up.append(up[0, 0])
        if cams_up:
            cams = torch.stack(cams_up)
            bg = (1 - cams.max(dim=0, keepdim=True)[0]) ** cfg.cam_bg_exponent
        else:
            cams = torch.zeros(0, *pixel_values.shape[-2:])
            bg = torch.ones(1, *pixel_values.shape[-2:])
        scores = torch.cat([bg, cams])[None]
        refined_scores = reference_par(
            pixel_values[b : b + 1],
            scores,
            cfg.par_dilations,
            cfg.par_num_iter,
            cfg.par_temperature,
            cfg.par_pos_weight,
        )
        keys = torch.tensor([0] + [c + 1 for c in present])
        out["pseudo_labels"].append(keys[refined_scores[0].argmax(0)])
        top2 = refined_scores[0].topk(min(2, len(keys)), dim=0).values
        out["top2_gaps"].append(
            top2[0] - top2[-1] if len(keys) > 1 else torch.full_like(top2[0], float("inf"))
        )
    out["pseudo_labels"] = torch.stack(out["pseudo_labels"])
    out["top2_gaps"] = torch.stack(out["top2_gaps"])  # [B, H, W] gap between the two best PAR scores
    return out


def reference_affinity_loss(affinity: torch.Tensor, labels: torch.Tensor, grid, radius=8, ignore=255):
    """Affinity loss with explicit loops over position pairs (small grids only)."""
    h, w = grid
    small = F.interpolate(labels[:, None].float(), size=grid, mode="nearest")[:, 0].long()
    pos_sum = neg_sum = 0.0
    n_pos = n_neg = 0
    for b in range(labels.shape[0]):
        for i in range(h * w):
            for j in range(h * w):
                yi, xi, yj, xj = i // w, i % w, j // w, j % w
                if max(abs(yi - yj), abs(xi - xj)) > radius:
                    continue
                li, lj = int(small[b, yi, xi]), int(small[b, yj, xj])
                if li == ignore or lj == ignore:
                    continue
                if li == lj:
                    pos_sum += 1 - float(affinity[b, i, j])
                    n_pos += 1
                else:
                    neg_sum += float(affinity[b, i, j])
                    n_neg += 1
    return 0.5 * pos_sum / (n_pos + 1) + 0.5 * neg_sum / (n_neg + 1)


def reference_layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """LayerNorm over the last dim written out: biased variance, PyTorch's default eps."""
    centred = x - x.mean(dim=-1, keepdim=True)
    return centred / torch.sqrt(centred.square().mean(dim=-1, keepdim=True) + eps) * weight + bias


def reference_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x @ weight^T + bias`` (a Linear, or a 1x1 conv of weight [out, in, 1, 1] on tokens)."""
    return x @ weight.reshape(weight.shape[0], -1).t() + bias


def reference_decoder_block(x: torch.Tensor, params: dict[str, torch.Tensor], num_heads: int) -> torch.Tensor:
    """One decoder block on the tokens [N, dim] of one image, from its parameters (``block.state_dict()``) as DESIGN
    Part 1 and the official code build it: x + MHA(ln_1(x)), then + MLP(ln_2(x)) with QuickGELU.

    The attention is torch's ``nn.MultiheadAttention`` (the official module): the packed in_proj weight [3 dim, dim]
    holds the q, k and v rows in that order; head i reads features i*hd..(i+1)*hd of each; scores q k^T / sqrt(hd),
    softmax over the keys; the heads concatenated in order, then out_proj."""
    dim = x.shape[-1]
    head_dim = dim // num_heads
    h = reference_layer_norm(x, params["layer_norm1.weight"], params["layer_norm1.bias"])
    in_weight, in_bias = params["self_attn.in_proj.weight"], params["self_attn.in_proj.bias"]
    q, k, v = (
        reference_linear(h, in_weight[i * dim : (i + 1) * dim], in_bias[i * dim : (i + 1) * dim])
        for i in range(3)
    )
    heads = []
    for head in range(num_heads):
        cols = slice(head * head_dim, (head + 1) * head_dim)
        scores = q[:, cols] @ k[:, cols].t() / math.sqrt(head_dim)  # [N, N]: query x key
        heads.append(torch.softmax(scores, dim=-1) @ v[:, cols])
    attended = torch.cat(heads, dim=-1)
    x = x + reference_linear(attended, params["self_attn.out_proj.weight"], params["self_attn.out_proj.bias"])
    h = reference_layer_norm(x, params["layer_norm2.weight"], params["layer_norm2.bias"])
    z = reference_linear(h, params["mlp.fc1.weight"], params["mlp.fc1.bias"])
    z = z * torch.sigmoid(1.702 * z)  # QuickGELU
    return x + reference_linear(z, params["mlp.fc2.weight"], params["mlp.fc2.bias"])


def reference_feature_head(layer_tokens: list[torch.Tensor], params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The feature head (official ``SegFormerHead``) on one image's patch tokens [N, D] per input, from its
    parameters, in eval mode (no dropout): per input fc2(ReLU(fc1(t))), concatenated in input order, 1x1 fuse conv.
    Returns the fused tokens [N, dim] (row-major over the grid)."""
    projected = []
    for i, tokens in enumerate(layer_tokens):
        mlp = f"layer_mlps.{i}."
        hidden = torch.relu(reference_linear(tokens, params[mlp + "fc1.weight"], params[mlp + "fc1.bias"]))
        projected.append(reference_linear(hidden, params[mlp + "fc2.weight"], params[mlp + "fc2.bias"]))
    return reference_linear(torch.cat(projected, dim=-1), params["fuse.weight"], params["fuse.bias"])


def reference_decoder(
    layer_tokens: list[torch.Tensor], grid: tuple[int, int], decoder: torch.nn.Module, num_heads: int
) -> torch.Tensor:
    """WeCLIP's decoder (eval mode) on one image's CLIP patch tokens [N, D] per feature layer: the feature head, the
    blocks in order (no positional embedding, no final LayerNorm), the 1x1 classifier. Returns logits [K, h, w],
    token n at cell (n // w, n % w)."""
    params = decoder.state_dict()
    x = reference_feature_head(layer_tokens, params)
    for i in range(len(decoder.blocks)):
        prefix = f"blocks.{i}."
        block = {name[len(prefix) :]: t for name, t in params.items() if name.startswith(prefix)}
        x = reference_decoder_block(x, block, num_heads)
    return reference_grid_map(
        reference_linear(x, params["classifier.weight"], params["classifier.bias"]), grid
    )


def reference_grid_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Tokens [N, C] of a row-major (h, w) grid as a map [C, h, w]: token n at cell (n // w, n % w)."""
    h, w = grid
    out = tokens.new_zeros(tokens.shape[1], h, w)
    for n in range(h * w):
        out[:, n // w, n % w] = tokens[n]
    return out
