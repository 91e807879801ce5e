"""The affinity that propagates the CAMs (DESIGN Part 1, CAM step 3 and the RFM): which attention maps it is
made of, and its transition matrix.

Every function takes the candidate maps explicitly: ``maps`` [B, L, N, N] are the patch-to-patch parts of
the head-averaged attention maps of the last L CLIP blocks, oldest first (see
`weclip_hf.pseudo_labels.patch_attention_maps`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CAMAffinity:
    """An affinity before its transition-matrix normalisation, with the RFM's layer choice when it made it."""

    affinity: torch.Tensor  # [B, N, N]
    rfm_keep: torch.Tensor | None = None  # [B, L] bool: the maps the RFM kept
    rfm_distance: torch.Tensor | None = None  # [B, L] the RFM statistic d_l


def _last_maps(maps: torch.Tensor, num_maps: int) -> torch.Tensor:
    """The last ``num_maps`` of ``maps`` [B, L, N, N]; refuses a count the maps do not hold."""
    if not 1 <= num_maps <= maps.shape[1]:
        raise ValueError(
            f"num_maps must be between 1 and the {maps.shape[1]} attention maps given, got {num_maps}; collect "
            "as many as `weclip_hf.pseudo_labels.attention_maps_needed` says."
        )
    return maps[:, -num_maps:]


def mean_attention_affinity(maps: torch.Tensor, num_maps: int) -> CAMAffinity:
    """WeCLIP without the RFM: the mean of the last ``num_maps`` of ``maps`` [B, L, N, N]."""
    return CAMAffinity(_last_maps(maps, num_maps).mean(dim=1))


def rfm_affinity(maps: torch.Tensor, num_maps: int, decoder_affinity: torch.Tensor) -> CAMAffinity:
    """The RFM affinity: of the last ``num_maps`` maps, keep those closest to the decoder affinity, weight
    them by it.

    Args:
        maps: [B, L, N, N] patch-to-patch attention maps. decoder_affinity: [B, N, N] A_dec (detached here).
    Returns:
        the affinity [B, N, N] with the kept maps [B, num_maps] and the statistic d [B, num_maps].

    Literal official rule: ``d_l = sum(A_dec - M_l)`` in float32, keep the layers with ``d_l <= mean(d)``,
    average them (``sum / (count + 1e-5)``), multiply elementwise by A_dec. Since sum(A_dec) is the same
    for every layer, this keeps the layers with the largest patch-to-patch attention mass. One deviation
    (`rfm_keep_rule`): the smallest d is always kept.
    """
    maps = _last_maps(maps, num_maps).float()
    a_dec = decoder_affinity.detach().float()
    d = (a_dec.unsqueeze(1) - maps).sum(dim=(-2, -1))  # [B, L]
    keep = rfm_keep_rule(d)
    weights = keep.to(maps.dtype)
    avg = torch.einsum("bl,blij->bij", weights, maps) / (weights.sum(dim=1)[:, None, None] + 1e-5)
    return CAMAffinity(avg * a_dec, keep, d)


def rfm_keep_rule(d: torch.Tensor) -> torch.Tensor:
    """The RFM's kept maps from its statistic d [B, L]: ``d_l <= mean(d)`` (official), and the smallest d.

    The official rule alone can keep none: when the d are nearly equal (maps of nearly equal patch mass, e.g. a
    saturated decoder affinity), their float32 mean can round below every one of them (measured: six d of
    152760.28 / 152760.30, mean 152760.27); the affinity is then zero and the transition matrix and the CAMs
    NaN. Keeping the smallest d changes nothing wherever the official rule keeps a map."""
    return (d <= d.mean(dim=1, keepdim=True)) | (d == d.amin(dim=1, keepdim=True))


def transition_matrix(affinity: torch.Tensor) -> torch.Tensor:
    """Affinity [B, N, N] -> symmetric, squared transition matrix (three column/row normalizations)."""
    t = affinity
    for _ in range(3):
        t = t / t.sum(dim=-2, keepdim=True)  # column sums (official dim 0)
        t = t / t.sum(dim=-1, keepdim=True)  # row sums (official dim 1)
    t = (t + t.transpose(-1, -2)) / 2
    return t @ t
