"""Tests for bal_jax.models: VGG16 shapes and size, the im2col convolution, dropout switching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bal_jax.models import VGG16, Conv3x3, choose_impl, count_params, rotation_net
from bal_jax.models.conv import lecun_normal
from bal_jax.models.vgg import VGG16_LAYOUT, scaled_channels


def _reference_param_count(num_classes, in_channels, width):
    """Conv kernels + conv biases + BatchNorm scale/shift + linear head, from the layout."""
    total, c = 0, in_channels
    for item in VGG16_LAYOUT:
        if item == "M":
            continue
        out = scaled_channels(item, width)
        total += 9 * c * out + out + 2 * out
        c = out
    return total + c * num_classes + num_classes


def test_width1_parameter_count_is_14_7m():
    abstract = nnx.eval_shape(lambda: VGG16(10, rngs=nnx.Rngs(0)))
    n = count_params(abstract)
    assert n == _reference_param_count(10, 3, 1.0) == 14_728_266


@pytest.mark.parametrize("width", [0.25, 0.125, 1 / 16])
def test_scaled_parameter_count(width):
    abstract = nnx.eval_shape(lambda: VGG16(7, in_channels=1, width=width, rngs=nnx.Rngs(0)))
    assert count_params(abstract) == _reference_param_count(7, 1, width)


def test_rotation_net_has_four_way_head_and_own_params():
    a = rotation_net(width=1 / 16, rngs=nnx.Rngs(0))
    b = VGG16(10, width=1 / 16, rngs=nnx.Rngs(0))
    assert a.num_classes == 4 and a.head.kernel.shape == (32, 4)
    ids_a = {
        id(v) for v in jax.tree.leaves(nnx.state(a), is_leaf=lambda x: isinstance(x, nnx.Variable))
    }
    ids_b = {
        id(v) for v in jax.tree.leaves(nnx.state(b), is_leaf=lambda x: isinstance(x, nnx.Variable))
    }
    assert not ids_a & ids_b


def test_output_and_feature_shapes():
    model = VGG16(10, width=1 / 16, rngs=nnx.Rngs(0))
    model.eval()
    x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    logits = jax.jit(lambda x: model(x))(x)
    feats = jax.jit(lambda x: model.features(x))(x)
    assert logits.shape == (3, 10) and feats.shape == (3, 32) and model.feature_dim == 32
    np.testing.assert_allclose(model.classify(feats), logits, rtol=1e-5, atol=1e-5)


def test_larger_inputs_are_global_average_pooled():
    model = VGG16(5, width=1 / 16, rngs=nnx.Rngs(0))
    model.eval()
    x = jax.random.normal(jax.random.key(2), (2, 64, 64, 3))
    feats = jax.jit(lambda x: model.features(x))(x)
    assert feats.shape == (2, 32)

    # Reference: run the layers by hand and average the final 2x2 map.
    def manual(x):
        layers = iter(model.layers)
        for item in VGG16_LAYOUT:
            if item == "M":
                n, h, w, c = x.shape
                x = x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
            else:
                x = next(layers)(x)
        assert x.shape[1:3] == (2, 2)
        return x.mean(axis=(1, 2))

    np.testing.assert_allclose(feats, jax.jit(manual)(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((2, 28, 28, 3), "pad"),
        ((2, 32, 48, 3), "multiples of 32"),
        ((2, 32, 32, 1), "3"),
        ((32, 32, 3), "channels-last"),
    ],
)
def test_bad_inputs_raise(shape, match):
    model = VGG16(10, width=1 / 16, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=match):
        model(jnp.zeros(shape))


def test_uint8_input_is_rejected():
    model = VGG16(10, width=1 / 16, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="float"):
        model(jnp.zeros((1, 32, 32, 3), jnp.uint8))


@pytest.mark.parametrize("kwargs", [{"width": 0.0}, {"dropout": 1.0}, {"num_classes": 0}])
def test_bad_constructor_arguments(kwargs):
    args = {"num_classes": 10, **kwargs}
    with pytest.raises(ValueError):
        VGG16(args.pop("num_classes"), rngs=nnx.Rngs(0), **args)


@pytest.mark.parametrize("size, cin, cout", [(1, 8, 4), (2, 6, 5), (4, 3, 8), (8, 5, 3)])
def test_conv3x3_matches_nnx_conv(size, cin, cout):
    ref = nnx.Conv(cin, cout, (3, 3), padding="SAME", rngs=nnx.Rngs(3))
    convs = {impl: Conv3x3(cin, cout, impl=impl, rngs=nnx.Rngs(3)) for impl in ("im2col", "xla")}
    # The same weights go into all three (run() below substitutes them).
    bias = jax.random.normal(jax.random.key(5), (cout,))
    x = jax.random.normal(jax.random.key(4), (3, size, size, cin))

    def out_and_grads(module, kernel, bias, x):
        def loss(kernel, bias, x):
            return jnp.sum(jnp.sin(_with(module, kernel, bias)(x)))

        return _with(module, kernel, bias)(x), jax.grad(loss, argnums=(0, 1, 2))(kernel, bias, x)

    @jax.jit
    def run(kernel, bias, x):
        return {
            name: out_and_grads(m, kernel, bias, x) for name, m in [("ref", ref), *convs.items()]
        }

    res = run(ref.kernel[...], bias, x)
    for impl in convs:
        y, grads = res[impl]
        np.testing.assert_allclose(y, res["ref"][0], rtol=1e-5, atol=1e-5)
        for a, b in zip(grads, res["ref"][1], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _with(module, kernel, bias):
    graphdef, state = nnx.split(module)
    state = nnx.as_pure(state)
    state["kernel"] = kernel
    state["bias"] = bias
    return nnx.merge(graphdef, state)


def test_choose_impl_rule():
    assert choose_impl(2, 2, 512, backend="cpu") == "im2col"
    assert choose_impl(1, 1, 512, backend="cpu") == "im2col"
    assert choose_impl(32, 32, 3, backend="cpu") == "im2col"
    assert choose_impl(32, 32, 64, backend="cpu") == "xla"
    assert choose_impl(8, 8, 256, backend="cpu") == "xla"
    assert choose_impl(2, 2, 512, backend="gpu") == "xla"


def test_conv_rejects_bad_impl_and_channels():
    with pytest.raises(ValueError, match="impl"):
        Conv3x3(3, 4, impl="fft", rngs=nnx.Rngs(0))
    conv = Conv3x3(3, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="3"):
        conv(jnp.zeros((1, 4, 4, 2)))


def test_dropout_is_switchable_at_predict_time():
    model = VGG16(10, width=1 / 16, dropout=0.5, rngs=nnx.Rngs(0))
    model.eval()
    feats = jax.random.normal(jax.random.key(0), (4, 32))
    det = model.classify(feats)
    np.testing.assert_array_equal(det, model.classify(feats))  # eval: no dropout
    s1 = model.classify(feats, deterministic=False, rngs=jax.random.key(1))
    s2 = model.classify(feats, deterministic=False, rngs=jax.random.key(2))
    s1_again = model.classify(feats, deterministic=False, rngs=jax.random.key(1))
    assert not np.allclose(s1, det) and not np.allclose(s1, s2)
    np.testing.assert_array_equal(s1, s1_again)
    # Reference: dropout by hand with the mask nnx.Dropout draws.
    keep = jax.random.bernoulli(jax.random.key(1), 0.5, feats.shape)
    manual = model.head(jnp.where(keep, feats / 0.5, 0.0))
    np.testing.assert_allclose(s1, manual, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 3, 64, 128), (512, 10), (3, 3, 1, 4)])
def test_lecun_normal_has_the_distribution_of_flax_default(shape):
    ours = np.asarray(lecun_normal(jax.random.key(0), shape))
    ref = np.asarray(nnx.initializers.lecun_normal()(jax.random.key(0), shape))
    fan_in = np.prod(shape[:-1])
    assert ours.shape == shape and ours.dtype == np.float32
    # Variance 1 / fan_in, truncated at two (pre-scaling) standard deviations.
    bound = 2.0 / np.sqrt(fan_in) / 0.87962566103423978
    assert np.abs(ours).max() <= bound * (1 + 1e-6)
    if ours.size > 1000:
        np.testing.assert_allclose(ours.std(), 1 / np.sqrt(fan_in), rtol=0.03)
        np.testing.assert_allclose(ours.std(), ref.std(), rtol=0.03)
    np.testing.assert_array_equal(ours, lecun_normal(jax.random.key(0), shape))
    traced = nnx.eval_shape(lambda: lecun_normal(jax.random.key(0), shape))
    assert traced.shape == shape


@pytest.mark.parametrize("size, cin, cout", [(2, 6, 5), (4, 3, 8)])
def test_conv3x3_im2col_matches_xla_in_bfloat16(size, cin, cout):
    convs = {
        impl: Conv3x3(cin, cout, impl=impl, dtype="bfloat16", rngs=nnx.Rngs(3))
        for impl in ("im2col", "xla")
    }
    x = jax.random.normal(jax.random.key(4), (3, size, size, cin))

    @jax.jit
    def run(x):
        def out_and_grads(conv):
            graphdef, params = nnx.split(conv)

            def loss(params, x):
                return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(x).astype(jnp.float32)))

            return nnx.merge(graphdef, params)(x), jax.grad(loss, argnums=(0, 1))(params, x)

        return {impl: out_and_grads(conv) for impl, conv in convs.items()}

    res = run(x)
    y, grads = res["im2col"]
    y_ref, grads_ref = res["xla"]
    assert y.dtype == jnp.bfloat16 and convs["xla"].kernel[...].dtype == jnp.float32
    # bf16 keeps 8 bits of mantissa: agreement to about 1% of the values' scale.
    np.testing.assert_allclose(np.float32(y), np.float32(y_ref), rtol=2e-2, atol=2e-2)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        assert a.dtype == b.dtype == jnp.float32  # gradients of float32 parameters and input
        np.testing.assert_allclose(a, b, rtol=5e-2, atol=5e-2)


def test_bfloat16_view_computes_in_bf16_with_float32_params():
    model = VGG16(10, width=1 / 16, rngs=nnx.Rngs(0))
    view = nnx.view(model, dtype="bfloat16")
    assert view.layers[0].conv.kernel is model.layers[0].conv.kernel  # parameters shared
    assert model.layers[0].bn.dtype == jnp.float32  # the model itself is unchanged
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    assert view.layers[0](x).dtype == jnp.bfloat16
    feats, logits = view.features(x), view(x)
    assert feats.dtype == logits.dtype == jnp.float32  # features, head and logits stay float32
    assert {p.dtype for p in jax.tree.leaves(nnx.state(view, nnx.Param))} == {jnp.dtype("float32")}
    ref = model(x)
    # 13 bf16 layers at 4 channels: a few percent of the logits' scale, not float32's 1e-6.
    assert np.linalg.norm(logits - ref) < 0.15 * np.linalg.norm(ref)
    built = VGG16(10, width=1 / 16, dtype="bfloat16", rngs=nnx.Rngs(0))
    assert built.layers[3].bn.dtype == jnp.bfloat16
    np.testing.assert_array_equal(built(x), logits)  # same weights, same dtype, same result


def test_unknown_dtype_is_rejected():
    with pytest.raises(ValueError, match="dtype must be one of"):
        VGG16(10, width=1 / 16, dtype="float16", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dtype must be one of"):
        Conv3x3(3, 4, dtype="fp32", rngs=nnx.Rngs(0))
