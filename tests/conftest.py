"""Test-wide settings: one torch thread (tiny models on 2 shared cores run faster and steadier)."""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)
