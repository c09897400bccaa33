"""Backbones: plain nn.Modules that map inputs to logits."""
