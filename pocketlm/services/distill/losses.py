"""Distillation losses against a teacher's stored top-k log-probabilities.

The teacher's distribution is known on its k most likely tokens; the rest of its mass,
1 - sum(p_topk), is one more outcome ("the tail"). Both distributions are coarsened the
same way (k tokens + tail), which keeps the divergences exact for that partition and a
lower bound of the divergences over the full vocabulary.
"""

from __future__ import annotations

import torch

LOSSES = ("kl", "jsd")
_EPS = 1e-6


def coarsen(logq: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log-probabilities [rows, k + 1] of the student: its top-k slots and the tail.

    logq: [rows, vocab] log-softmax of the student; ids: [rows, k] the teacher's top-k.
    """
    picked = logq.gather(1, ids)  # [rows, k]
    tail = torch.log1p(-picked.exp().sum(1).clamp(max=1 - _EPS))  # log(1 - sum q_topk)
    return torch.cat([picked, tail.unsqueeze(1)], dim=1)


def teacher_coarse(logprobs: torch.Tensor) -> torch.Tensor:
    """log-probabilities [rows, k + 1] of the teacher: its top-k and the tail."""
    logprobs = logprobs.float()
    tail = torch.log1p(-logprobs.exp().sum(1).clamp(max=1 - _EPS))
    return torch.cat([logprobs, tail.unsqueeze(1)], dim=1)


def forward_kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(P_teacher || Q_student) per row, on coarsened log-probabilities [rows, k + 1]."""
    return (logp.exp() * (logp - logq)).sum(1)


def jsd(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence per row (natural log; at most log 2)."""
    logm = torch.logsumexp(torch.stack([logp, logq]), dim=0) - torch.log(torch.tensor(2.0))
    return 0.5 * (forward_kl(logp, logm) + forward_kl(logq, logm))


def divergence(kind: str, teacher_logprobs, ids, student_logq) -> torch.Tensor:
    """Per-row divergence [rows] of the student (log-softmax [rows, vocab]) from the
    teacher's top-k (ids [rows, k], logprobs [rows, k])."""
    logq = coarsen(student_logq, ids)
    logp = teacher_coarse(teacher_logprobs)
    return forward_kl(logp, logq) if kind == "kl" else jsd(logp, logq)
