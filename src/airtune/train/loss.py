"""The causal-LM loss scored on the target tokens alone (SFT and pt on the CPU).

transformers' causal-LM loss projects every position onto the vocabulary (batch x length x vocab
logits), takes log-softmax over all of them and keeps the positions whose label is not -100. In SFT the
prompt tokens are -100, and with packing the first token of each example is too. Here:

- the model is asked for logits at the target positions only (`logits_to_keep`, a boolean mask of
  shifted labels != -100, which transformers' causal LMs accept): the LM head, usually the largest
  matrix product of a small model, runs on those rows alone;
- `target_cross_entropy` computes the loss and, in the same pass over the logits, their gradient
  (softmax - one-hot), so the backward pass is a multiplication instead of a log-softmax backward.

The loss is the same number as transformers' (sum over targets / `num_items_in_batch`, or the mean over
the batch's targets), so gradient accumulation and several processes scale it the same way. It is set
as the Trainer's `compute_loss_func` (sft.build_trainer).
"""

from __future__ import annotations

import inspect


def shifted_targets(labels):
    """Position i predicts token i+1: labels shifted left by one, -100 at the end of each row."""
    import torch.nn.functional as F

    return F.pad(labels, (0, 1), value=-100)[..., 1:]


def accepts_target_mask(model) -> bool:
    """Whether the (PEFT-wrapped) causal LM takes `logits_to_keep` as a boolean (batch, length) mask:
    its forward has the argument and slices with transformers' `slice_logits_to_keep`
    (`compat.slices_logits_with_mask`)."""
    from airtune import compat
    from airtune.train.model import base_model

    forward = type(base_model(model)).forward
    if "logits_to_keep" not in inspect.signature(forward).parameters:
        return False
    return compat.slices_logits_with_mask(forward)


def _cross_entropy_function():
    import torch

    class TargetCrossEntropy(torch.autograd.Function):
        """sum_i (logsumexp(logits_i) - logits_i[target_i]) / denominator, with the gradient with respect to
        the logits computed in the forward pass (one exp over the logits instead of log-softmax forward and
        backward); float32 arithmetic whatever the logits' dtype."""

        @staticmethod
        def forward(ctx, logits, targets, denominator):
            x = logits.float()
            peak = x.max(dim=-1, keepdim=True).values
            exp = (x - peak).exp_()
            total = exp.sum(dim=-1, keepdim=True)
            rows = torch.arange(x.shape[0], device=x.device)
            loss = ((peak + total.log()).squeeze(-1) - x[rows, targets]).sum() / denominator
            if ctx.needs_input_grad[0]:
                grad = exp.div_(total)  # softmax
                grad[rows, targets] -= 1.0
                ctx.save_for_backward(grad.div_(denominator).to(logits.dtype))
            return loss

        @staticmethod
        def backward(ctx, grad_loss):
            (grad,) = ctx.saved_tensors
            return grad * grad_loss.to(grad.dtype), None, None

    return TargetCrossEntropy


_FUNCTION = None


def target_cross_entropy(outputs, labels, num_items_in_batch=None):
    """The Trainer's `compute_loss_func`: `outputs.logits` holds one row per target (the model was asked
    for the positions where the shifted labels are not -100), `labels` the batch's labels."""
    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _cross_entropy_function()
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    targets = shifted_targets(labels)
    targets = targets[targets != -100].to(logits.device)
    if logits.dim() != 2 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"target_cross_entropy: {tuple(logits.shape)} logits for {targets.shape[0]} targets; the "
                         f"model was not asked for the target positions (logits_to_keep)")
    if targets.numel() == 0:
        return logits.sum() * 0.0  # no target in this batch: a zero that keeps the graph
    denominator = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    if hasattr(denominator, "item"):
        denominator = denominator.item()
    return _FUNCTION.apply(logits, targets, float(denominator))
