"""Every bad input raises ValueError/TypeError naming what was expected and what came, before any backend runs.

Each case runs with gpucnn's dispatch replaced by a spy that fails the test if
called, so a check that only fires inside a backend (or not at all) fails here.
"""
import numpy as np
import pytest

import gpucnn.backend
import gpucnn.functional as F

F32, F64 = np.float32, np.float64
rng = np.random.default_rng(0)


def r(*shape, dtype=F32):
    return rng.standard_normal(shape).astype(dtype)


x, w, b = r(2, 3, 6, 6), r(4, 3, 3, 3), r(4)          # conv2d(x, w, b): (2, 4, 4, 4)
dy_conv = r(2, 4, 4, 4)
xp = r(2, 3, 6, 6)                                     # pooling 2x2: (2, 3, 3, 3)
xl, wl, bl = r(3, 5), r(2, 5), r(2)                    # linear: (3, 2)
logits, labels = r(3, 5), np.array([0, 4, 2])
bn_x, bn_c = r(4, 3, 2, 2), r(3)
mask = F.dropout(x, 0.5, seed=0)[1]

VALUE, TYPE = ValueError, TypeError
# (id, call, exception, regex the message must match)
CASES = [
    # conv2d: ranks, channels, bias, sizes
    ("conv_x_3d", lambda: F.conv2d(x[0], w), VALUE, r"x must have rank 4, got .*shape \(3, 6, 6\)"),
    ("conv_w_3d", lambda: F.conv2d(x, w[0]), VALUE, r"w must have rank 4, got .*shape \(3, 3, 3\)"),
    ("conv_channel_mismatch", lambda: F.conv2d(x, r(4, 2, 3, 3)), VALUE, r"channel mismatch: x has 3 channels.*expects 2"),
    ("conv_bias_len", lambda: F.conv2d(x, w, r(3)), VALUE, r"bias must have shape \(4,\).*got \(3,\)"),
    ("conv_bias_2d", lambda: F.conv2d(x, w, r(4, 1)), VALUE, r"b must have rank 1"),
    ("conv_kernel_too_big", lambda: F.conv2d(r(1, 3, 2, 2), r(1, 3, 5, 5), padding=1), VALUE,
     r"kernel 5x5 is larger than the padded input 4x4"),
    ("conv_kernel_too_big_w", lambda: F.conv2d(r(1, 1, 9, 2), r(1, 1, 3, 3)), VALUE, r"kernel 3x3 .* padded input 9x2"),
    ("conv_stride_0", lambda: F.conv2d(x, w, stride=0), VALUE, r"stride must be positive, got 0"),
    ("conv_stride_neg", lambda: F.conv2d(x, w, stride=-1), VALUE, r"stride must be positive, got -1"),
    ("conv_stride_pair_0", lambda: F.conv2d(x, w, stride=(1, 0)), VALUE, r"stride must be positive, got \(1, 0\)"),
    ("conv_stride_float", lambda: F.conv2d(x, w, stride=1.5), TYPE, r"stride must be an int or a pair of ints, got 1.5"),
    ("conv_stride_bool", lambda: F.conv2d(x, w, stride=True), TYPE, r"stride must be an int or a pair"),
    ("conv_stride_triple", lambda: F.conv2d(x, w, stride=(1, 1, 1)), TYPE, r"stride must be an int or a pair"),
    ("conv_padding_neg", lambda: F.conv2d(x, w, padding=-1), VALUE, r"padding must be non-negative, got -1"),
    ("conv_padding_pair_neg", lambda: F.conv2d(x, w, padding=(1, -2)), VALUE, r"padding must be non-negative, got \(1, -2\)"),
    ("conv_same_stride2", lambda: F.conv2d(x, w, stride=2, padding="same"), VALUE, r"padding='same' needs stride 1.*\(2, 2\)"),
    ("conv_same_stride12", lambda: F.conv2d(x, w, stride=(1, 2), padding="same"), VALUE, r"'same' needs stride 1"),
    ("conv_padding_unknown", lambda: F.conv2d(x, w, padding="full"), VALUE, r"'valid' or 'same', got 'full'"),
    ("conv_padding_float", lambda: F.conv2d(x, w, padding=0.5), TYPE, r"padding must be an int or a pair"),
    ("conv_dtype_mismatch", lambda: F.conv2d(x, w.astype(F64)), TYPE, r"share one dtype.*x: float32, w: float64"),
    ("conv_bias_dtype", lambda: F.conv2d(x, w, b.astype(F64)), TYPE, r"share one dtype.*b: float64"),
    ("conv_int_x", lambda: F.conv2d(x.astype(np.int32), w), TYPE, r"x must be float32.*got .*int32"),
    ("conv_float16_w", lambda: F.conv2d(x, w.astype(np.float16)), TYPE, r"w must be float32.*float16"),
    ("conv_list_x", lambda: F.conv2d(x.tolist(), w), TYPE, r"x must be an array, got list"),
    ("conv_relu_channels", lambda: F.conv2d_relu(x, r(4, 2, 3, 3)), VALUE, r"channel mismatch"),
    ("conv_relu_same_stride", lambda: F.conv2d_relu(x, w, stride=3, padding="same"), VALUE, r"'same' needs stride 1"),
    ("conv_bwd_dy_shape", lambda: F.conv2d_backward(r(2, 4, 5, 5), x, w), VALUE, r"dy must have shape \(2, 4, 4, 4\), got \(2, 4, 5, 5\)"),
    ("conv_bwd_dy_shape_pad", lambda: F.conv2d_backward(dy_conv, x, w, padding=1), VALUE, r"dy must have shape \(2, 4, 6, 6\)"),
    ("conv_bwd_dy_dtype", lambda: F.conv2d_backward(dy_conv.astype(F64), x, w), TYPE, r"share one dtype.*dy: float64"),
    ("conv_bwd_w_3d", lambda: F.conv2d_backward(dy_conv, x, w[0]), VALUE, r"w must have rank 4"),
    # pooling
    ("maxpool_x_3d", lambda: F.max_pool2d(xp[0], 2), VALUE, r"x must have rank 4"),
    ("maxpool_window_too_big", lambda: F.max_pool2d(r(1, 1, 3, 3), 4), VALUE, r"pool window 4x4 is larger than the input 3x3"),
    ("maxpool_window_too_wide", lambda: F.max_pool2d(r(1, 1, 5, 3), (2, 4)), VALUE, r"pool window 2x4 .* input 5x3"),
    ("maxpool_kernel_0", lambda: F.max_pool2d(xp, 0), VALUE, r"kernel_size must be positive, got 0"),
    ("maxpool_stride_0", lambda: F.max_pool2d(xp, 2, stride=0), VALUE, r"stride must be positive, got 0"),
    ("maxpool_stride_neg", lambda: F.max_pool2d(xp, 2, stride=-2), VALUE, r"stride must be positive, got -2"),
    ("maxpool_int_x", lambda: F.max_pool2d(xp.astype(np.int64), 2), TYPE, r"x must be float32.*int64"),
    ("maxpool_bwd_dy_shape", lambda: F.max_pool2d_backward(r(2, 3, 2, 2), xp, 2), VALUE, r"dy must have shape \(2, 3, 3, 3\)"),
    ("maxpool_bwd_dy_dtype", lambda: F.max_pool2d_backward(r(2, 3, 3, 3, dtype=F64), xp, 2), TYPE, r"share one dtype"),
    ("maxpool_bwd_indices_shape", lambda: F.max_pool2d_backward(r(2, 3, 3, 3), xp, 2, indices=np.zeros((2, 3, 2, 2), np.int64)),
     VALUE, r"indices must have shape \(2, 3, 3, 3\)"),
    ("avgpool_x_3d", lambda: F.avg_pool2d(xp[0], 2), VALUE, r"x must have rank 4"),
    ("avgpool_window_too_big", lambda: F.avg_pool2d(r(1, 1, 2, 5), 3), VALUE, r"pool window 3x3 is larger than the input 2x5"),
    ("avgpool_stride_neg", lambda: F.avg_pool2d(xp, 2, stride=(1, -1)), VALUE, r"stride must be positive"),
    ("avgpool_bwd_dy_shape", lambda: F.avg_pool2d_backward(r(2, 3, 3, 2), xp, 2), VALUE, r"dy must have shape \(2, 3, 3, 3\)"),
    # elementwise, resampling
    ("relu_int", lambda: F.relu(np.arange(4)), TYPE, r"x must be float32.*int"),
    ("relu_bwd_dy_shape", lambda: F.relu_backward(r(2, 3), r(3, 2)), VALUE, r"dy must have shape \(3, 2\), got \(2, 3\)"),
    ("relu_bwd_dy_dtype", lambda: F.relu_backward(r(3, 2, dtype=F64), r(3, 2)), TYPE, r"share one dtype"),
    ("upsample_scale_0", lambda: F.upsample_nearest2d(xp, 0), VALUE, r"scale must be positive, got 0"),
    ("upsample_scale_pair_0", lambda: F.upsample_nearest2d(xp, (2, 0)), VALUE, r"scale must be positive, got \(2, 0\)"),
    ("upsample_scale_neg", lambda: F.upsample_nearest2d(xp, -2), VALUE, r"scale must be positive"),
    ("upsample_scale_float", lambda: F.upsample_nearest2d(xp, 1.5), TYPE, r"scale must be an int or a pair"),
    ("upsample_x_3d", lambda: F.upsample_nearest2d(xp[0], 2), VALUE, r"x must have rank 4"),
    ("upsample_bwd_not_multiple", lambda: F.upsample_nearest2d_backward(r(1, 1, 5, 4), 2), VALUE,
     r"dy spatial shape \(5, 4\) is not a multiple of scale \(2, 2\)"),
    ("upsample_bwd_scale_0", lambda: F.upsample_nearest2d_backward(r(1, 1, 4, 4), 0), VALUE, r"scale must be positive"),
    ("add_shape", lambda: F.add(r(2, 3), r(3, 2)), VALUE, r"b must have shape \(2, 3\), got \(3, 2\)"),
    ("add_dtype", lambda: F.add(r(2, 3), r(2, 3, dtype=F64)), TYPE, r"share one dtype.*a: float32, b: float64"),
    ("concat_mismatched_h", lambda: F.concat([r(1, 2, 4, 4), r(1, 3, 5, 4)]), VALUE, r"equal N, H, W.*\(1, 3, 5, 4\)"),
    ("concat_mismatched_n", lambda: F.concat([r(1, 2, 4, 4), r(2, 2, 4, 4)]), VALUE, r"equal N, H, W"),
    ("concat_empty", lambda: F.concat([]), VALUE, r"at least one array"),
    ("concat_3d", lambda: F.concat([r(1, 2, 4, 4), r(2, 4, 4)]), VALUE, r"xs\[1\] must have rank 4"),
    ("concat_dtype", lambda: F.concat([r(1, 2, 4, 4), r(1, 2, 4, 4, dtype=F64)]), TYPE, r"share one dtype"),
    ("concat_bwd_channels", lambda: F.concat_backward(r(1, 5, 2, 2), [2, 2]), VALUE, r"\[2, 2\] do not add up to dy's 5 channels"),
    # linear
    ("linear_in_mismatch", lambda: F.linear(xl, r(2, 4)), VALUE, r"linear shape mismatch: x has 5 features.*\(2, 4\)"),
    ("linear_bias_len", lambda: F.linear(xl, wl, r(3)), VALUE, r"bias must have shape \(2,\), got \(3,\)"),
    ("linear_x_3d", lambda: F.linear(r(3, 5, 1), wl), VALUE, r"x must have rank 2"),
    ("linear_w_1d", lambda: F.linear(xl, r(5)), VALUE, r"w must have rank 2"),
    ("linear_dtype", lambda: F.linear(xl, wl.astype(F64)), TYPE, r"share one dtype"),
    ("linear_bwd_dy_shape", lambda: F.linear_backward(r(3, 3), xl, wl), VALUE, r"dy must have shape \(3, 2\), got \(3, 3\)"),
    # softmax and loss
    ("softmax_dim", lambda: F.softmax(logits, 2), VALUE, r"dim must be an int in \[-2, 2\), got 2"),
    ("softmax_dim_neg", lambda: F.log_softmax(logits, -3), VALUE, r"dim must be an int in \[-2, 2\), got -3"),
    ("softmax_int", lambda: F.softmax(np.arange(6).reshape(2, 3)), TYPE, r"x must be float32"),
    ("softmax_bwd_dy_shape", lambda: F.softmax_backward(r(3, 4), logits), VALUE, r"dy must have shape \(3, 5\), got \(3, 4\)"),
    ("ce_label_negative", lambda: F.softmax_cross_entropy(logits, np.array([0, -1, 2])), VALUE,
     r"labels must lie in \[0, 5\), got values from -1 to 2 \(first bad one: -1 at row 1\)"),
    ("ce_label_too_big", lambda: F.softmax_cross_entropy(logits, np.array([0, 5, 2])), VALUE,
     r"labels must lie in \[0, 5\), got values from 0 to 5"),
    ("ce_label_column_too_big", lambda: F.softmax_cross_entropy(logits, np.array([[0], [5], [2]])), VALUE,
     r"labels must lie in \[0, 5\)"),
    ("ce_label_float", lambda: F.softmax_cross_entropy(logits, np.array([0.0, 1.0, 2.0])), TYPE,
     r"labels must be integer class indices \(class indices of shape \(3,\) or \(3, 1\), or float one-hot rows "
     r"of shape \(3, 5\)\), got ndarray of shape \(3,\) and dtype float64"),
    ("ce_label_length", lambda: F.softmax_cross_entropy(logits, np.array([0, 1])), VALUE,
     r"labels: expected class indices of shape \(3,\) or \(3, 1\).*, got shape \(2,\)"),
    ("ce_label_int_rows", lambda: F.softmax_cross_entropy(logits, np.array([[0, 1], [1, 0], [1, 0]])), VALUE,
     r"got shape \(3, 2\) \(integer rows of several columns are ambiguous: one-hot rows must be float\)"),
    ("ce_onehot_width", lambda: F.softmax_cross_entropy(logits, np.eye(4, dtype=np.float32)[[0, 1, 2]]), VALUE,
     r"float one-hot rows of shape \(3, 5\), got one-hot rows of shape \(3, 4\)"),
    ("ce_onehot_not_onehot", lambda: F.softmax_cross_entropy(logits, np.full((3, 5), 0.2, np.float32)), VALUE,
     r"float rows must be one-hot \(exactly one 1, the rest 0\), but row 0 is"),
    ("ce_onehot_two_ones", lambda: F.softmax_cross_entropy(logits, np.array([[1, 0, 0, 0, 0], [0, 1, 1, 0, 0],
                                                                                [0, 0, 1, 0, 0]], np.float32)),
     VALUE, r"but row 1 is"),
    ("ce_label_list", lambda: F.softmax_cross_entropy(logits, [0, 1, 2]), TYPE, r"labels must be an array of integer class indices, got list"),
    ("ce_logits_1d", lambda: F.softmax_cross_entropy(r(5), np.array([0])), VALUE, r"logits must have rank 2"),
    ("ce_logits_int", lambda: F.softmax_cross_entropy(np.ones((3, 5), np.int32), labels), TYPE, r"logits must be float32"),
    # dropout
    ("dropout_p_1", lambda: F.dropout(x, 1.0), VALUE, r"p must be in \[0, 1\), got 1.0"),
    ("dropout_p_neg", lambda: F.dropout(x, -0.1), VALUE, r"p must be in \[0, 1\), got -0.1"),
    ("dropout_p_big", lambda: F.dropout(x, 1.5), VALUE, r"p must be in \[0, 1\)"),
    ("dropout_p_str", lambda: F.dropout(x, "0.5"), VALUE, r"p must be in \[0, 1\), got '0.5'"),
    ("dropout_p_eval_still_checked", lambda: F.dropout(x, 2.0, training=False), VALUE, r"p must be in \[0, 1\)"),
    ("dropout_int_x", lambda: F.dropout(np.ones((2, 2), np.int64), 0.5), TYPE, r"x must be float32"),
    ("dropout_bwd_mask_shape", lambda: F.dropout_backward(r(2, 3, 6, 5), mask), VALUE, r"mask must have shape \(2, 3, 6, 5\)"),
    ("dropout_bwd_mask_dtype", lambda: F.dropout_backward(x, mask.astype(F64)), TYPE, r"share one dtype"),
    # batch norm
    ("bn_running_mean_channels", lambda: F.batch_norm(bn_x, r(4), r(3)), VALUE, r"running_mean must have shape \(3,\), got \(4,\)"),
    ("bn_running_var_channels", lambda: F.batch_norm(bn_x, r(3), r(2)), VALUE, r"running_var must have shape \(3,\), got \(2,\)"),
    ("bn_weight_channels", lambda: F.batch_norm(bn_x, None, None, r(2), training=True), VALUE, r"weight must have shape \(3,\)"),
    ("bn_bias_channels", lambda: F.batch_norm(bn_x, None, None, bn_c, r(5), training=True), VALUE, r"bias must have shape \(3,\)"),
    ("bn_x_3d", lambda: F.batch_norm(r(4, 3, 2), bn_c, bn_c), VALUE, r"x must have rank 2 or 4"),
    ("bn_weight_2d", lambda: F.batch_norm(bn_x, None, None, r(3, 1), training=True), VALUE, r"weight must have rank 1"),
    ("bn_dtype", lambda: F.batch_norm(bn_x, bn_c.astype(F64), bn_c), TYPE, r"share one dtype.*running_mean: float64"),
    ("bn_one_value_per_channel", lambda: F.batch_norm(r(1, 3), None, None, training=True), VALUE,
     r"more than one value per channel.*\(1, 3\)"),
    ("bn_bwd_dy_shape", lambda: F.batch_norm_backward(r(4, 3, 2, 1), bn_x, bn_c, bn_c, bn_c), VALUE, r"dy must have shape \(4, 3, 2, 2\)"),
    ("bn_bwd_save_channels", lambda: F.batch_norm_backward(bn_x, bn_x, bn_c, r(2), bn_c), VALUE, r"must have shape \(3,\)"),
    # optimizers
    ("sgd_lengths", lambda: F.sgd_step([r(3)], [r(3), r(3)], [r(3)], lr=0.1), VALUE, r"parameter lists differ in length"),
    ("sgd_grad_shape", lambda: F.sgd_step([r(3)], [r(4)], [r(3)], lr=0.1), VALUE, r"grads\[0\] must have shape \(3,\), got \(4,\)"),
    ("sgd_grad_dtype", lambda: F.sgd_step([r(3)], [r(3, dtype=F64)], [r(3)], lr=0.1), TYPE, r"share one dtype"),
    ("adam_step_0", lambda: F.adam_step([r(3)], [r(3)], [r(3)], [r(3)], 0), VALUE, r"step counts from 1, got 0"),
    ("adam_state_shape", lambda: F.adam_step([r(3)], [r(3)], [r(3)], [r(2)], 1), VALUE, r"exp_avg_sqs\[0\] must have shape \(3,\)"),
    ("adam_int_grad", lambda: F.adam_step([r(3)], [np.ones(3, np.int32)], [r(3)], [r(3)], 1), TYPE, r"grads\[0\] must be float32"),
]


def _spy(*args, **kwargs):
    pytest.fail(f"a backend was dispatched to ({args[0] if args else '?'}) before the input check fired")


@pytest.fixture
def no_backend(monkeypatch):
    """Replace dispatch everywhere it is reachable from: any backend call now fails the test."""
    monkeypatch.setattr(gpucnn.backend, "dispatch", _spy)
    monkeypatch.setattr(F, "dispatch", _spy)


@pytest.mark.parametrize("call,exc,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_before_backend(no_backend, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_spy_catches_a_backend_call(no_backend):
    """The fixture really intercepts: a valid call reaches the spy (so the tests above could fail)."""
    with pytest.raises(pytest.fail.Exception, match="dispatched to \\(conv2d\\)"):
        F.conv2d(x, w, b)
    with pytest.raises(pytest.fail.Exception):
        F.softmax_cross_entropy(logits, labels)


def test_valid_calls_pass_the_checks():
    """The same arrays with the error removed go through (the checks are not over-strict)."""
    F.conv2d(x, w, b)
    F.conv2d(x, w, stride=(1, 2), padding="valid")
    F.conv2d(x, w, padding="same")
    F.conv2d(r(1, 3, 2, 2), r(1, 3, 4, 4), padding=1)  # kernel equal to the padded input
    F.conv2d_backward(dy_conv, x, w)
    F.max_pool2d(r(1, 1, 3, 3), 3)
    F.softmax_cross_entropy(logits, np.array([0, 4, 4], np.uint8))
    F.dropout(x, 0.0)
    F.linear(xl, wl, bl)
    F.batch_norm(bn_x, bn_c.copy(), np.abs(bn_c) + 1, training=True)
    F.upsample_nearest2d_backward(r(1, 1, 4, 6), (2, 3))


def test_bn_eval_without_running_stats(no_backend):
    with pytest.raises(ValueError, match="running"):
        F.batch_norm(bn_x, None, None, training=False)


def test_max_pool_indices_checked(no_backend):
    x = np.random.default_rng(5).standard_normal((1, 2, 4, 4)).astype(np.float32)
    dy = np.ones((1, 2, 2, 2), np.float32)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        F.max_pool2d_backward(dy, x, 2, indices=np.full((1, 2, 2, 2), 16))
    with pytest.raises(TypeError, match="integer"):
        F.max_pool2d_backward(dy, x, 2, indices=np.zeros((1, 2, 2, 2), np.float32))


def test_dim_bool_rejected(no_backend):
    with pytest.raises(ValueError, match="dim"):
        F.softmax(np.ones((2, 3), np.float32), dim=True)
