"""PyTorch twins of a gpunn training run, for the benchmarks to race: the same model from gpunn's
initial weights, the same loss, optimizer, schedule and batch order, in two loops.

* :class:`TorchEager`: the idiomatic loop (index_select the batch, zero_grad/forward/loss/backward/
  step), every batch, the step's rate set in the param group; on a GPU or the CPU;
* :class:`TorchGraph`: zero_grad+forward+loss+backward+SGD captured as one CUDA graph and replayed
  per full batch, the rate in a device tensor (fused SGD); a GPU only.

Both take a :class:`TorchContext`: torch, the device, the data on it, the loss, the schedule.
"""
from __future__ import annotations

import time

from benchlib import Unavailable, error_text, say, torch_loss, torch_twin


class TorchContext:
    """What both PyTorch contestants of a net share: torch, the device, the data on it, the loss."""

    def __init__(self, backend, cfg, data, weights, schedule, steps_per_epoch):
        try:
            import torch
        except ImportError as exc:
            raise Unavailable(f"PyTorch is not installed ({exc})") from None
        self.torch = torch
        if backend == "cuda":
            if not torch.cuda.is_available():
                raise Unavailable(f"PyTorch {torch.__version__} sees no CUDA device "
                                  f"(torch.version.cuda = {torch.version.cuda})")
            self.device = torch.device("cuda")
            self.sync = torch.cuda.synchronize
        else:  # a CPU smoke run: torch on the CPU too (no graphs there)
            self.device = torch.device("cpu")
            self.sync = lambda: None
        dev = self.device
        self.cfg, self.weights, self.schedule, self.steps_per_epoch = cfg, weights, schedule, steps_per_epoch
        self.x = torch.from_numpy(data.train_x).to(dev)
        self.y = torch.from_numpy(data.train_y.astype("int64")).to(dev)
        self.test_x = torch.from_numpy(data.test_x).to(dev)
        self.test_y = torch.from_numpy(data.test_y.astype("int64")).to(dev)
        self.n = int(self.x.shape[0])
        self.loss = torch_loss(torch, cfg.loss, int(data.num_classes), dev)
        self.matmul_precision = torch.get_float32_matmul_precision()

    def model(self):
        """The PyTorch twin of the gpunn model, from gpunn's initial weights."""
        return torch_twin(self.torch, self.weights, self.cfg.activation, self.cfg.output_activation, self.device)

    def rates(self, e, steps):
        """The rates of epoch e's first ``steps`` steps: gpunn's schedule at the same global steps."""
        first = e * self.steps_per_epoch
        return [self.schedule(first + s) for s in range(steps)]

    def permutation(self, e):
        from gpunn.data import epoch_permutation

        return self.torch.from_numpy(epoch_permutation(self.n, self.cfg.seed, e)).to(self.device)

    def accuracy(self, model):
        with self.torch.no_grad():
            pred = model(self.test_x).argmax(1)
        return float((pred == self.test_y).double().mean().item())


class TorchEager:
    """The idiomatic loop: index_select the batch, zero_grad/forward/loss/backward/step, all batches."""

    name = "torch_eager"

    def __init__(self, ctx):
        cfg, torch = ctx.cfg, ctx.torch
        self.ctx, self.torch = ctx, torch
        self.model = ctx.model()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   nesterov=bool(cfg.nesterov and cfg.momentum > 0))
        bs = cfg.batch_size
        self.batches = [(i, min(i + bs, ctx.n)) for i in range(0, ctx.n, bs)]

    def epoch(self, e):
        ctx, model, opt, lossf = self.ctx, self.model, self.opt, self.ctx.loss
        perm, rates = ctx.permutation(e), ctx.rates(e, len(self.batches))
        group = opt.param_groups[0]
        ctx.sync()
        t0 = time.perf_counter()
        for (i, j), lr in zip(self.batches, rates):
            ids = perm[i:j]
            xb, yb = ctx.x.index_select(0, ids), ctx.y.index_select(0, ids)
            group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss = lossf(model(xb), yb)
            loss.backward()
            opt.step()
        ctx.sync()
        return time.perf_counter() - t0

    def accuracy(self):
        return self.ctx.accuracy(self.model)

    def describe(self):
        return f"torch {self.torch.__version__}, foreach SGD, all {len(self.batches)} batches"


def capture_graph(torch, fn):
    """What ``fn()`` queues, as one CUDA graph (nothing runs while capturing); ``.replay()`` runs it."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph


class TorchGraph:
    """zero_grad+forward+loss+backward+SGD captured as one CUDA graph, replayed for every full batch."""

    name = "torch_graph"

    def __init__(self, ctx):
        torch = ctx.torch
        if ctx.device.type != "cuda":
            raise Unavailable("CUDA graphs need a CUDA device (--backend cuda)")
        self.ctx, self.torch = ctx, torch
        bs = ctx.cfg.batch_size
        if ctx.n < bs:
            raise Unavailable(f"fewer training samples ({ctx.n}) than one batch ({bs})")
        self.batches = [(i, i + bs) for i in range(0, ctx.n - bs + 1, bs)]
        self.dropped = ctx.n - len(self.batches) * bs
        self.attempts = []
        # the rate in a device tensor (fused SGD reads it on the device); else a constant rate
        for mode in ("device lr", "constant lr"):
            try:
                self._capture(mode)
                self.mode = mode
                break
            except Exception as exc:
                self.attempts.append(f"{mode}: {error_text(exc)}")
                say(f"  [torch_graph] capture with {mode} failed: {error_text(exc)}")
                try:
                    torch.cuda.synchronize()
                except Exception:
                    pass
        else:
            raise RuntimeError("CUDA graph capture failed: " + "; ".join(self.attempts))

    def _capture(self, mode):
        torch, ctx, cfg = self.torch, self.ctx, self.ctx.cfg
        model = ctx.model()
        nesterov = bool(cfg.nesterov and cfg.momentum > 0)
        if mode == "device lr":
            lr = torch.tensor(float(ctx.schedule(0)), dtype=torch.float32, device=ctx.device)
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, nesterov=nesterov, fused=True)
        else:
            lr = None
            opt = torch.optim.SGD(model.parameters(), lr=float(ctx.schedule(0)), momentum=cfg.momentum,
                                  nesterov=nesterov)
        bs = cfg.batch_size
        sx = torch.empty((bs, ctx.x.shape[1]), device=ctx.device)
        sy = torch.empty((bs,), dtype=torch.int64, device=ctx.device)
        sx.copy_(ctx.x[:bs])
        sy.copy_(ctx.y[:bs])
        start = [p.detach().clone() for p in model.parameters()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):   # warm-up: allocations, cuBLAS handles, the optimizer's state
            for _ in range(3):
                opt.zero_grad(set_to_none=True)
                ctx.loss(model(sx), sy).backward()
                opt.step()
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():   # undo the warm-up, in place (the graph keeps these addresses)
            for p, p0 in zip(model.parameters(), start):
                p.copy_(p0)
            for state in opt.state.values():
                buf = state.get("momentum_buffer")
                if buf is not None:
                    buf.zero_()   # v = m*0 + g = g: torch's (and gpunn's) first momentum step
        opt.zero_grad(set_to_none=True)   # backward inside the graph then writes .grad in its own pool

        def step():
            ctx.loss(model(sx), sy).backward()
            opt.step()

        graph = capture_graph(torch, step)
        self.model, self.opt, self.graph, self.sx, self.sy, self.lr = model, opt, graph, sx, sy, lr

    def epoch(self, e):
        torch, ctx, graph, sx, sy, lr_t = self.torch, self.ctx, self.graph, self.sx, self.sy, self.lr
        perm, rates = ctx.permutation(e), ctx.rates(e, len(self.batches))
        x, y = ctx.x, ctx.y
        ctx.sync()
        t0 = time.perf_counter()
        for (i, j), lr in zip(self.batches, rates):
            ids = perm[i:j]
            torch.index_select(x, 0, ids, out=sx)
            torch.index_select(y, 0, ids, out=sy)
            if lr_t is not None:
                lr_t.fill_(lr)
            graph.replay()
        ctx.sync()
        return time.perf_counter() - t0

    def accuracy(self):
        return self.ctx.accuracy(self.model)

    def describe(self):
        what = ("fused SGD, lr in a device tensor" if self.mode == "device lr"
                else f"foreach SGD at a CONSTANT lr {self.ctx.schedule(0):g} (device lr failed: {self.attempts[0]})")
        return f"torch {self.torch.__version__}, {what}; {len(self.batches)} full batches ({self.dropped} samples dropped)"


# ---------------------------------------------------------------------------- one network
