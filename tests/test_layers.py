"""Layers, losses and whole networks: backprop checked against finite differences (float64)."""
import numpy as np
import pytest

from gpunn.backend import NumpyBackend
from gpunn.errors import ShapeError
from gpunn.gradcheck import check_model
from gpunn.backend.ops import ACTIVATIONS
from gpunn.layers import ACTIVATION_LAYERS, Dense, Sequential, Softmax, from_config, mlp
from gpunn.losses import MSE, SoftmaxCrossEntropy

F64 = NumpyBackend(np.float64)


def batch(n=5, d=7, c=3, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, c, n).astype(np.int32)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("loss_cls", [SoftmaxCrossEntropy, MSE])
def test_dense_gradients_match_finite_differences(act, loss_cls):
    x, y = batch()
    model = Sequential([Dense(7, 3, act, backend=F64, rng=np.random.default_rng(2))])
    assert check_model(model, loss_cls(F64), x, y) < 1e-6


@pytest.mark.parametrize("layer_cls", [*ACTIVATION_LAYERS.values(), Softmax], ids=lambda c: c.__name__)
def test_standalone_activation_layers(layer_cls):
    x, y = batch(n=6, d=5, c=4)
    rng = np.random.default_rng(3)
    model = Sequential([Dense(5, 4, backend=F64, rng=rng), layer_cls(4, backend=F64), Dense(4, 4, backend=F64, rng=rng)])
    assert check_model(model, SoftmaxCrossEntropy(F64), x, y) < 1e-6


def test_softmax_layer_with_mse():
    x, y = batch(n=4, d=6, c=5)
    model = mlp([6, 8, 5], "tanh", "softmax", backend=F64, seed=4)
    assert [type(l).__name__ for l in model.layers] == ["Dense", "Dense", "Softmax"]
    assert check_model(model, MSE(F64), x, y) < 1e-6


@pytest.mark.parametrize("act,loss", [("relu", SoftmaxCrossEntropy), ("sigmoid", MSE), ("tanh", SoftmaxCrossEntropy)])
def test_whole_network_gradients(act, loss):
    """The primer's shape scaled down: backprop through three layers by the chain rule."""
    x, y = batch(n=9, d=11, c=4, seed=5)
    model = mlp([11, 6, 5, 4], act, "sigmoid" if loss is MSE else "identity", backend=F64, seed=6)
    assert check_model(model, loss(F64), x, y) < 1e-6


def test_gradcheck_catches_a_wrong_backward():
    """The checker itself must fail when backprop is wrong (a test that cannot fail proves nothing)."""
    x, y = batch()
    model = Sequential([Dense(7, 3, "tanh", backend=F64, rng=np.random.default_rng(2))])
    real = model.layers[0].backward

    def broken(dy):
        dx = real(dy)
        model.layers[0].db *= 1.01
        return dx

    model.layers[0].backward = broken
    with pytest.raises(AssertionError, match="Dense"):
        check_model(model, SoftmaxCrossEntropy(F64), x, y)


def test_initialisation_suits_activation_and_is_seeded():
    be = NumpyBackend()
    relu = Dense(1000, 500, "relu", backend=be, rng=np.random.default_rng(0))
    assert relu.W.dtype == np.float32 and relu.W.shape == (1000, 500)
    assert abs(relu.W.std() - np.sqrt(2 / 1000)) < 2e-3          # He
    sig = Dense(1000, 500, "sigmoid", backend=be, rng=np.random.default_rng(0))
    assert abs(np.abs(sig.W).max() - np.sqrt(6 / 1500)) < 1e-3   # Glorot-uniform limit
    assert not relu.b.any()
    a, b = mlp([20, 10, 3], seed=7, backend=be), mlp([20, 10, 3], seed=7, backend=be)
    assert all(np.array_equal(p, q) for p, q in zip(a.params, b.params))
    c = mlp([20, 10, 3], seed=8, backend=be)
    assert not np.array_equal(a.params[0], c.params[0])


def test_buffers_are_reused_across_steps_and_smaller_batches():
    be = NumpyBackend()
    model = mlp([7, 5, 3], backend=be)
    x, _ = batch(n=8)
    y1 = model.forward(x.astype(np.float32))
    y2 = model.forward(x[:3].astype(np.float32))
    assert np.shares_memory(y1, y2) and y2.shape == (3, 3)


def test_bad_inputs_name_the_layer_and_shapes():
    be = NumpyBackend()
    model = mlp([7, 5, 3], backend=be)
    with pytest.raises(ShapeError, match=r"Dense\(7→5, relu\).*\(batch, 7\).*\(4, 6\)"):
        model.forward(np.zeros((4, 6), np.float32))
    with pytest.raises(ShapeError, match="float32"):
        model.forward(np.zeros((4, 7), np.float64))
    with pytest.raises(ShapeError, match="got \\(7,\\)"):
        model.forward(np.zeros(7, np.float32))
    with pytest.raises(ShapeError, match="empty batch"):
        model.forward(np.zeros((0, 7), np.float32))
    loss = SoftmaxCrossEntropy(be)
    out = model.forward(np.zeros((4, 7), np.float32))
    with pytest.raises(ShapeError, match="int32"):
        loss(out, np.zeros(4, np.float32), be.zeros((1,)))
    with pytest.raises(ShapeError, match=r"labels must have shape \(4,\), got \(5,\)"):
        loss(out, np.zeros(5, np.int32), be.zeros((1,)))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="out_features"):
        Dense(3, 0)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        Dense(3, 2, "swish")


def test_config_round_trip():
    model = mlp([6, 8, 5], "tanh", "softmax", backend=NumpyBackend())
    again = from_config(model.config(), backend=NumpyBackend())
    assert again.config() == model.config()
    assert repr(again) == "Sequential(Dense(6→8, tanh), Dense(8→5), Softmax(5))"


def test_a_model_keeps_its_parameters_in_one_flat_array():
    """Each layer's W, b, dW, db are aligned C-contiguous views into the model's flat arrays,
    with the values they were initialised with, so SGD updates the model in one op."""
    from gpunn.layers import ALIGN
    from gpunn.optim import SGD

    be = NumpyBackend()
    alone = [Dense(7, 5, "relu", backend=be, rng=np.random.default_rng(1)), Dense(5, 3, backend=be, rng=np.random.default_rng(2))]
    initial = [p.copy() for layer in alone for p in layer.params]
    model = Sequential(alone)
    params, grads = model.params, model.grads
    assert all(np.array_equal(a, b) for a, b in zip(params, initial))
    for arrays in (params, grads):
        for a, o in zip(arrays, arrays.offsets):
            assert a.flags.c_contiguous and np.shares_memory(a, arrays.flat) and o % ALIGN == 0
    assert params[0] is model.layers[0].W and grads[3] is model.layers[1].db
    opt = SGD(params, grads, 0.5, momentum=0.9, backend=be)
    assert len(opt._steps) == 1 and opt._steps[0][0] is params.flat
    for g in grads:
        g[...] = 1.0
    opt.step()
    for p, before in zip(params, initial):
        np.testing.assert_allclose(p, before - 0.5, rtol=1e-6)
    assert all(np.shares_memory(v, opt._steps[0][2]) and v.shape == p.shape for v, p in zip(opt.velocities, params))


def test_sgd_on_separate_arrays_still_updates_each():
    from gpunn.optim import SGD

    be = NumpyBackend()
    p, g = [np.ones((2, 3), np.float32), np.ones(4, np.float32)], [np.full((2, 3), 2, np.float32), np.full(4, 3, np.float32)]
    opt = SGD(p, g, 0.1, backend=be)
    assert len(opt._steps) == 2
    opt.step()
    np.testing.assert_allclose(p[0], 0.8)
    np.testing.assert_allclose(p[1], 0.7)
    with pytest.raises(ShapeError, match="grad 1 must have shape"):
        SGD(p, [g[0], g[0]], 0.1, backend=be)


def test_layers_check_their_boundaries_once():
    """The layers call the unchecked op implementations, so they check what comes in."""
    be = NumpyBackend()
    model = mlp([7, 5, 3], backend=be)
    with pytest.raises(ShapeError, match=r"Dense\(7→5, relu\): input must be C-contiguous"):
        model.forward(np.zeros((7, 4), np.float32).T)
    out = model.forward(np.zeros((4, 7), np.float32))
    with pytest.raises(ShapeError, match=r"Dense\(5→3\): the gradient must be .*\(4, 3\).*float64\(4, 3\)"):
        model.backward(np.zeros((4, 3)))
    with pytest.raises(ShapeError, match=r"\(4, 3\) like the last output, got float32\(2, 3\)"):
        model.backward(np.zeros((2, 3), np.float32))
    model.backward(np.ones_like(out))   # the right gradient goes through
    sigmoid_out = mlp([7, 5, 3], output_activation="sigmoid", backend=be)
    sigmoid_out.forward(np.zeros((4, 7), np.float32))
    with pytest.raises(ValueError, match=r"Dense\(5→3, sigmoid\): its bias gradient is not dy's row sum"):
        sigmoid_out.backward(np.ones_like(out), output_bias_grad_done=True)  # a loss cannot have summed it
    loss = SoftmaxCrossEntropy(be)
    with pytest.raises(ShapeError, match="loss must have shape"):
        loss(out, np.zeros(4, np.int32), be.zeros((2,)))


def test_the_model_as_pytorch_and_keras_users_call_it():
    """model(x) is forward; parameters() what an optimizer takes; train()/eval() set every layer's
    mode, and evaluation (predict, gpunn.evaluate) runs in eval mode and puts the mode back."""
    import gpunn

    be = NumpyBackend()
    model = mlp([4, 3, 2], "relu", backend=be, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    out = model(x).copy()
    np.testing.assert_array_equal(out, model.forward(x))
    assert model.parameters() == model.params and model.training
    assert model.eval() is model and not model.training and not any(l.training for l in model.layers)
    assert model.train() is model and model.training
    seen = []
    real = model.layers[0].forward
    model.layers[0].forward = lambda a: (seen.append(model.layers[0].training), real(a))[1]
    model.predict(x)
    gpunn.evaluate(model, x, np.zeros(5, np.int32))
    assert seen == [False, False] and model.training
    assert model.predict(x[0]) == out[0].argmax()


def test_dropouts_mask_statistics_scale_and_determinism():
    from gpunn.layers import Dropout

    be = NumpyBackend()
    d = Dropout(1000, p=0.3, seed=5, backend=be)
    x = np.ones((200, 1000), np.float32)
    y1 = d.forward(x).copy()
    kept = y1 != 0
    assert abs(kept.mean() - 0.7) < 0.005  # 200,000 draws: the standard error is 0.001
    assert np.allclose(y1[kept], 1 / 0.7) and abs(kept.mean(axis=0).std() - np.sqrt(0.21 / 200)) < 0.01
    y2 = d.forward(x).copy()  # the next step: another mask
    assert not np.array_equal(y1, y2) and abs((y1 != 0).astype(float).ravel() @ (y2 != 0).ravel() / x.size - 0.49) < 0.01
    d.set_count(0)
    np.testing.assert_array_equal(d.forward(x), y1)  # the same step count: the same mask
    other = Dropout(1000, p=0.3, seed=6, backend=be)
    assert not np.array_equal(other.forward(x), y1)  # another seed: another mask
    d.training = False  # (Sequential.eval() sets it on every layer)
    assert d.forward(x) is x and d.backward(x) is x  # the identity in eval mode


def test_dropouts_gradient_by_finite_differences_with_a_fixed_mask():
    """d/dx of sum(w * dropout(x)) with the mask held fixed (the count reset before each forward)."""
    from gpunn.layers import Dropout

    be = NumpyBackend(np.float64)
    d = Dropout(6, p=0.4, seed=9, backend=be)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 6)), rng.standard_normal((3, 6))

    def f(a):
        d.set_count(0)
        return float((w * d.forward(a)).sum())

    f(x)
    grad = d.backward(w.copy())
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = 1e-6
        numeric[i] = (f(x + e) - f(x - e)) / 2e-6
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    assert (grad == 0).any() and (grad != 0).any()


def test_dropout_in_a_model_and_its_configuration():
    be = NumpyBackend()
    model = mlp([8, 6, 5, 3], "relu", backend=be, seed=2, dropout=0.25)
    assert repr(model) == "Sequential(Dense(8→6, relu), Dropout(6, p=0.25), Dense(6→5, relu), Dropout(5, p=0.25), Dense(5→3))"
    seeds = [layer.seed for layer in model.layers if hasattr(layer, "seed")]
    assert len(set(seeds)) == 2
    rebuilt = from_config(model.config(), backend=be)
    assert rebuilt.config() == model.config()
    with pytest.raises(ValueError, match="layer 1: Dropout p must be a number in \\[0, 1\\)"):
        from_config([{**c, "p": 1.5} if c["type"] == "Dropout" else c for c in model.config()], backend=be)
