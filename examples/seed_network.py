"""The primer's network: 784-16-16-10, sigmoid, quadratic (MSE) cost, mini-batch SGD in batches of 100.

    python examples/seed_network.py [--data-dir DIR] [--metrics-json PATH] [--epochs 30] [--lr 6.0] [--backend B] [--threads N]

Plain SGD (no momentum) with the learning rate decayed over the epochs (cosine).
It reaches about 95.8% test accuracy on MNIST (measured; see the README).  The same
run from the command line:

    gpunn train --hidden 16,16 --activation sigmoid --loss mse --batch-size 100 \\
        --lr 6 --momentum 0 --no-nesterov --lr-schedule cosine --epochs 30
"""
import argparse
import sys
import time

from gpunn.cli import report_errors
from gpunn.data import load_mnist
from gpunn.options import add_threads_option, cpu_threads
from gpunn.output import write_json
from gpunn.train import TrainConfig, Trainer


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--metrics-json")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=6.0)
    p.add_argument("--backend", default=None)
    add_threads_option(p)
    args = p.parse_args()
    with cpu_threads(args.threads):  # --threads 1 on a busy machine (a line says so when it is)
        return run(args)


def run(args):
    cfg = TrainConfig(
        hidden=(16, 16),            # 784 → 16 → 16 → 10
        activation="sigmoid",       # σ(z) = 1 / (1 + e^-z) in every layer ...
        output_activation="sigmoid",  # ... the output layer too
        loss="mse",                 # C = 1/2n Σ ‖y(x) − a‖²
        batch_size=100,
        lr=args.lr, momentum=0.0, nesterov=False,
        lr_schedule="cosine",       # learning-rate decay over the epochs
        epochs=args.epochs,
    )
    data = load_mnist(args.data_dir)
    trainer = Trainer(cfg, data, backend=args.backend)
    t0 = time.perf_counter()
    trainer.fit()
    acc = trainer.history[-1].test_accuracy
    print(f"784-16-16-10 sigmoid/MSE: test accuracy {100 * acc:.2f}% in {time.perf_counter() - t0:.1f} s")
    if args.metrics_json:
        write_json(args.metrics_json, trainer.metrics(sum(h.seconds for h in trainer.history)))
    return 0


if __name__ == "__main__":
    sys.exit(report_errors("seed_network.py", main))  # bad input: one line and exit status 2, no traceback
