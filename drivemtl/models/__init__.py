"""Bare ``nn.Module`` models, usable without Lightning (export, reuse)."""

from drivemtl.models.backbones import Backbone, available_backbones
from drivemtl.models.net import MultiTaskNet

__all__ = ["Backbone", "MultiTaskNet", "available_backbones"]
