"""Turn a trained :class:`~separator.models.QueryUNet` into a faster inference-only model.

Two rewrites, both exact up to float rounding (tests compare against the untouched model):

* :func:`fold_batchnorm` - a BatchNorm that directly follows a convolution (the
  official ZS-ASS ``conv -> BN -> ReLU`` blocks and every decoder's up-sampling)
  is an affine map per channel in eval mode, so it moves into the convolution's
  weight and bias and leaves an ``nn.Identity`` behind. On the ``zsass`` preset
  this removes 29 full passes over the largest feature maps per chunk.
* channels-last weights (:func:`prepare_for_inference`) - oneDNN (CPU) and cuDNN
  run 3x3 convolutions on NHWC maps without re-ordering each input and output;
  on the ``zsass`` preset this alone is ~1.4x on 2 CPU threads (see
  benchmarks/README.md).

Both change the model's parameters in place and its state dict (folded
convolutions gain a ``bias``), so they are for inference objects only:
:meth:`separator.api.Separator.from_pretrained` applies them to the model it
builds; fine-tune a model built with :meth:`separator.checkpoint.ModelFolder.build`.
"""
from __future__ import annotations

import torch
from torch import nn

from separator.models.blocks import DecoderStage, PlainBlock

__all__ = ["fold_batchnorm", "prepare_for_inference"]


def _fold(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.Module) -> bool:
    """Fold eval-mode ``bn`` into ``conv`` (output channels on dim 0 for Conv2d, dim 1 for ConvTranspose2d)."""
    if not isinstance(bn, nn.BatchNorm2d) or bn.training or not bn.track_running_stats or bn.running_var is None:
        return False
    with torch.no_grad():
        scale = bn.running_var.add(bn.eps).rsqrt()  # (C,)
        if bn.affine:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.affine:
            shift = shift + bn.bias
        shape = (1, -1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (-1, 1, 1, 1)
        conv.weight.mul_(scale.reshape(shape))
        if conv.bias is None:
            conv.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
        else:
            conv.bias.mul_(scale).add_(shift)
    return True


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every conv-followed BatchNorm of an eval-mode ``model`` into its convolution, in place.

    Returns the number of BatchNorm layers removed. Layers in training mode are
    left alone (their output depends on the batch), so call ``model.eval()`` first.
    """
    folded = 0
    for module in model.modules():
        if isinstance(module, PlainBlock):
            pairs = [("conv1", "bn1"), ("conv2", "bn2")]
        elif isinstance(module, DecoderStage):
            pairs = [("up", "up_bn")]
        else:
            continue
        for conv_name, bn_name in pairs:
            if _fold(getattr(module, conv_name), getattr(module, bn_name)):
                setattr(module, bn_name, nn.Identity())
                folded += 1
    return folded


def prepare_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """``model.eval()``, :func:`fold_batchnorm`, and channels-last weights; returns ``model`` (changed in place)."""
    model.eval()
    fold_batchnorm(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model
