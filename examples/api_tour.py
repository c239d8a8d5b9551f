"""gpunn's Python API in one page: the README's example, verbatim (tests/test_examples.py keeps
the two the same and runs this file).  Data: $GPUNN_DATA_DIR, else the cache (downloaded and
verified if needed).  Writes mnist-mlp.npz in the current folder."""
import gpunn
from gpunn.data import load_mnist
from gpunn.layers import mlp
from gpunn.losses import SoftmaxCrossEntropy
from gpunn.optim import AdamW

be = gpunn.get_backend()                                # $GPUNN_BACKEND, else cuda on a GPU, numpy on a CPU
data = load_mnist()                                     # or load_mnist("path/to/folder")
x, y = be.asarray(data.train_x), be.asarray(data.train_y)
model = mlp([784, 256, 10], "relu", backend=be, seed=0)
loss_fn, loss = SoftmaxCrossEntropy(be), be.zeros((1,))
opt = AdamW(model.parameters(), model.grads, lr=1e-3, backend=be)  # PyTorch's AdamW (weight_decay 0.01)

for start in range(0, len(data.train_y), 128):          # one epoch, batches of 128
    xb, yb = x[start:start + 128], y[start:start + 128]
    logits = model(xb)                                  # forward: a view of the last layer's buffer
    model.backward(loss_fn(logits, yb, loss))           # d loss / d logits, then the chain rule
    opt.step()

gpunn.save(model, "mnist-mlp.npz")                      # architecture and weights
model = gpunn.load("mnist-mlp.npz", backend=be)
print(f"test accuracy {gpunn.evaluate(model, be.asarray(data.test_x), be.asarray(data.test_y)):.4f}")
print("predicted", model.predict(data.test_x[:8]), "labels", data.test_y[:8])  # host arrays of class indices
