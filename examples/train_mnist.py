"""Train an MLP on MNIST with gpunn's Python API, in one screen.

    python examples/train_mnist.py [--data-dir DIR] [--metrics-json PATH] [--epochs N] [--backend auto|numpy|cuda] [--threads N]

Every piece is visible: the backend, the model, the loss, the optimizer, the
schedule, and the training step (forward, loss gradient, backward, update).
"""
import argparse
import sys
import time

import gpunn
from gpunn.cli import report_errors
from gpunn.data import batch_slices, epoch_permutation, load_mnist
from gpunn.layers import mlp
from gpunn.losses import SoftmaxCrossEntropy
from gpunn.optim import SGD, Schedule
from gpunn.options import add_threads_option, cpu_threads
from gpunn.output import write_json
from gpunn.train import evaluate


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--metrics-json")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--backend", default=None)
    add_threads_option(p)
    args = p.parse_args()
    with cpu_threads(args.threads):  # --threads 1 on a busy machine (a line says so when it is)
        return run(args)


def run(args):
    be = gpunn.get_backend(args.backend)                       # numpy on a CPU, cuda on a GPU
    data = load_mnist(args.data_dir)                           # downloads + verifies if needed
    x, y = be.asarray(data.train_x), be.asarray(data.train_y)  # (60000, 784) float32, (60000,) int32
    tx, ty = be.asarray(data.test_x), be.asarray(data.test_y)  # moved to the device once

    model = mlp([784, 256, 10], "relu", backend=be, seed=0)    # logits = relu(x W1 + b1) W2 + b2
    loss_fn = SoftmaxCrossEntropy(be, check_labels=False)      # fused softmax + cross-entropy; load_mnist
                                                               # checked the labels once (a GPU would sync per check)
    opt = SGD(model.params, model.grads, lr=0.1, momentum=0.9, nesterov=True, backend=be)
    batch = 128
    steps = -(-len(data.train_y) // batch)
    schedule = Schedule("cosine", 0.1, args.epochs, steps)
    loss_sum = be.zeros((1,))                                  # summed on the device
    history, t = [], 0
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        perm = be.asarray(epoch_permutation(len(data.train_y), seed=0, epoch=epoch))
        loss_sum[...] = 0
        for start, stop in batch_slices(len(data.train_y), batch):
            idx = perm[start:stop]
            logits = model.forward(x[idx])                     # (B, 10)
            grad = loss_fn(logits, y[idx], loss_sum, accumulate=True)  # (p - onehot)/B
            model.backward(grad)                               # chain rule, layer by layer
            opt.step(schedule(t))
            t += 1
        be.synchronize()
        seconds = time.perf_counter() - t0
        acc = evaluate(model, tx, ty)
        loss = float(be.to_numpy(loss_sum)[0]) / steps         # the one host read per epoch
        history.append({"epoch": epoch + 1, "loss": loss, "test_accuracy": acc, "seconds": seconds,
                        "samples_per_second": len(data.train_y) / seconds})
        print(f"epoch {epoch + 1}: loss {loss:.4f}  test accuracy {100 * acc:.2f}%  ({seconds:.1f} s)")

    if args.metrics_json:
        write_json(args.metrics_json, {"test_accuracy": acc, "backend": be.name,
                                       "train_seconds": sum(h["seconds"] for h in history), "epochs": history})
    return 0


if __name__ == "__main__":
    sys.exit(report_errors("train_mnist.py", main))  # bad input: one line and exit status 2, no traceback
