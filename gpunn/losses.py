"""Losses: each returns the gradient with respect to the model's output.

The loss value is written into a one-element device array (``+=`` when the caller
accumulates over an epoch), so nothing comes back to the host until it is reported.
"""
from __future__ import annotations


from gpunn import checks
from gpunn.errors import ShapeError


class Loss:
    """A loss on one backend.  ``check_labels=False`` skips reading the labels to the host to
    check their range (on a GPU, a synchronisation per call): only for callers that checked
    them once themselves, as the trainer does for its data set."""

    name = "loss"  # its word on the command line (--loss) and in configurations

    def __init__(self, backend, check_labels=True):
        self.backend = backend
        self.check_labels = check_labels
        self._grad = None

    def __repr__(self):
        return type(self).__name__ + "()"

    #: whether the loss's op can also sum its gradient over the rows (the bias gradient of the
    #: layer that made ``out``: see ``bias_grad`` below)
    takes_bias_grad = False

    def __call__(self, out, labels, loss, accumulate=False, correct=None, bias_grad=None):
        """Loss of ``out`` (N, C) against int32 ``labels`` (N,) into ``loss[0]``; returns d loss / d out:
        a view of the loss's own gradient buffer, which the next call overwrites (copy it to keep it).

        ``correct`` ((1,) int32): also ``+=`` the rows whose argmax is the label (the trainer's
        accuracy count, in the loss's own kernel where it has one). ``bias_grad`` ((C,), only where
        ``takes_bias_grad``): also the gradient summed over the rows, the bias gradient of a last
        layer whose output is ``out`` unchanged (``Dense(..., "identity")``)."""
        be = self.backend
        checks.loss_args(f"{self!r}", out, labels, loss, be, check_labels=self.check_labels)
        n = out.shape[0]
        if n == 0:
            raise ShapeError(f"{self!r}: empty batch (0 rows)")
        if correct is not None:
            checks.array(f"{self!r}", "correct", correct, shape=(1,), dtype=checks.int32, backend=be)
        if bias_grad is not None:
            if not self.takes_bias_grad:
                raise ValueError(f"{self!r}: takes no bias_grad (its gradient is not the bias's: the output "
                                 f"activation comes between)")
            checks.array(f"{self!r}", "bias_grad", bias_grad, shape=(out.shape[1],), dtype=be.dtype, backend=be)
        if self._grad is None or self._grad.shape[0] < n or self._grad.shape[1] != out.shape[1]:
            self._grad = be.empty(out.shape)
        grad = self._grad[:n]
        # checked above; the gradient buffer is ours: the unchecked implementation
        self._run(be.unchecked, out, labels, grad, loss, accumulate, correct, bias_grad)
        return grad

    def _run(self, ops, out, labels, grad, loss, accumulate, correct, bias_grad):
        """The loss's op (``ops`` is the backend's ``unchecked``)."""
        raise NotImplementedError


class SoftmaxCrossEntropy(Loss):
    """Cross-entropy of ``softmax(logits)``: ``mean(logsumexp(z) - z[label])``; grad ``(p - onehot)/N``.

    Takes *logits*: the softmax is fused in, which is both faster and stable."""

    name = "cross-entropy"
    takes_bias_grad = True

    def _run(self, ops, out, labels, grad, loss, accumulate, correct, bias_grad):
        ops.softmax_cross_entropy(out, labels, grad, loss, accumulate, correct, bias_grad)


class MSE(Loss):
    """The primer's quadratic cost ``C = 1/(2N) Σ ‖y − onehot‖²``; grad ``(y − onehot)/N``."""

    name = "mse"

    def _run(self, ops, out, labels, grad, loss, accumulate, correct, bias_grad):
        if correct is not None:  # on y, before anything else reads it
            ops.count_correct(out, labels, correct)
        ops.mse(out, labels, grad, loss, accumulate=accumulate)


#: The losses by their command-line word: the one place a word differs from its op's name
#: (``cross-entropy``, the convention, is the op ``softmax_cross_entropy``).
LOSSES = {loss.name: loss for loss in (SoftmaxCrossEntropy, MSE)}


def get_loss(name, backend, check_labels=True):
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")
    return LOSSES[name](backend, check_labels)
