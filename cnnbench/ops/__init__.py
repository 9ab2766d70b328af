"""Operators: the deformable convolution (v1, and v2 with a modulation mask)."""

from cnnbench.ops.deform import DeformConv2d, deform_conv2d

__all__ = ["DeformConv2d", "deform_conv2d"]
