"""Knowledge distillation loss (OFA: cross-entropy against the teacher's softmax, temperature 1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    target = F.softmax(teacher_logits / temperature, dim=1)
    return -(target * F.log_softmax(logits / temperature, dim=1)).sum(dim=1).mean() * temperature ** 2
