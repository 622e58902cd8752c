"""Convolutional networks as layers: ResNet-50/101 (He et al. 2016; torchvision's v1.5, with
the stride on the 3x3 convolution) and VGG-16 (Simonyan & Zisserman 2015), 224x224 inputs.

A convolution is an implicit GEMM of 2*Cin*Cout*k^2*Hout*Wout FLOPs per image; its weights
are Cin*Cout*k^2 parameters (no bias before batch norm). Batch norm (2C parameters), ReLU,
pooling and residual adds are memory-bound. Stored activations: the output of every conv,
batch norm and ReLU, which autograd keeps for the backward pass. Backward is the input- and
weight-gradient convolutions, except for the first, whose input is the data: autograd
computes no gradient for it, so its backward is the weight gradient alone.
"""

from __future__ import annotations

from dataclasses import replace

from dlsim.workload.model import ConvShape, Kernel, Layer, Model, backward_of, elementwise


def _conv(c_in: int, c_out: int, k: int, hw_out: int, b: int, dt: int) -> Kernel:
    pixels = b * hw_out * hw_out
    flops = 2.0 * c_in * c_out * k * k * pixels
    return Kernel("conv", flops, dt * (c_in * c_out * k * k + pixels * (c_in + c_out)))


def _without_input_gradient(layer: Layer) -> Layer:
    """The layer reading the data: its first kernel's backward is one convolution, not two."""
    first, *rest = layer.backward
    return replace(layer, backward=(replace(first, flops=first.flops / 2,
                                            bytes=first.bytes / 2), *rest))


class _Builder:
    """Accumulates kernels, parameters and stored activations into named layers."""

    def __init__(self, b: int, dt: int):
        self.b, self.dt = b, dt
        self.layers: list[Layer] = []

    def layer(self, name: str, convs: list[tuple[int, int, int, int, int]], norm: bool = True,
              extra_elements: float = 0.0, params_extra: int = 0,
              pool: tuple[int, int] | None = None) -> None:
        """``convs`` are (c_in, c_out, kernel, hw_out, stride); ``pool`` is the (kernel,
        stride) of a pooling window after them whose output is ``extra_elements``."""
        kernels, params, stored, shapes = [], params_extra, 0.0, []
        for c_in, c_out, k, hw, stride in convs:
            kernels.append(_conv(c_in, c_out, k, hw, self.b, self.dt))
            shapes.append(ConvShape("conv", c_in, c_out, k, stride, hw * stride, hw))
            out = self.b * c_out * hw * hw
            params += c_in * c_out * k * k + (2 * c_out if norm else c_out)
            stored += out * (3 if norm else 2)  # conv (+ bn) + relu outputs
            kernels.append(elementwise(out * (2 if norm else 1), self.dt))
        if pool is not None:
            c, hw = shapes[-1].c_out, shapes[-1].hw_out
            shapes.append(ConvShape("pool", c, c, pool[0], pool[1], hw, hw // pool[1]))
        if extra_elements:
            kernels.append(elementwise(extra_elements, self.dt))
        fwd = tuple(kernels)
        output = extra_elements or self.b * shapes[-1].c_out * shapes[-1].hw_out ** 2
        self.layers.append(Layer(name, params, fwd, backward_of(fwd), stored * self.dt,
                                 output * self.dt, tuple(shapes)))


def resnet(name: str, blocks: tuple[int, ...], b: int, dt: int) -> Model:
    m = _Builder(b, dt)
    m.layer("conv1", [(3, 64, 7, 112, 2)], extra_elements=b * 64 * 56 * 56,
            pool=(3, 2))  # + 3x3 max-pool, stride 2
    m.layers[0] = _without_input_gradient(m.layers[0])
    c_in, hw = 64, 56
    for stage, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
        for i in range(count):
            stride = 2 if (i == 0 and stage > 0) else 1
            hw_out = hw // stride
            convs = [(c_in, width, 1, hw, 1), (width, width, 3, hw_out, stride),
                     (width, 4 * width, 1, hw_out, 1)]
            if i == 0:
                convs.append((c_in, 4 * width, 1, hw_out, stride))  # projection shortcut
            m.layer(f"layer{stage + 1}.{i}", convs, extra_elements=b * 4 * width * hw_out ** 2)
            c_in, hw = 4 * width, hw_out
    head_fwd = (elementwise(b * 2048 * 49, dt), Kernel("gemm", 2.0 * b * 2048 * 1000,
                                                       dt * (2048 * 1000 + b * 3048)))
    m.layers.append(Layer("fc", 2048 * 1000 + 1000, head_fwd, backward_of(head_fwd),
                          b * 3048 * dt, b * 1000 * dt))
    return Model(name, tuple(m.layers), b * 3 * 224 * 224 * dt)


def vgg16(b: int, dt: int) -> Model:
    m = _Builder(b, dt)
    c_in, hw = 3, 224
    for stage, (count, width) in enumerate(((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))):
        convs = []
        for _ in range(count):
            convs.append((c_in, width, 3, hw, 1))
            c_in = width
        hw //= 2
        m.layer(f"block{stage + 1}", convs, norm=False, extra_elements=b * width * hw * hw,
                pool=(2, 2))
    m.layers[0] = _without_input_gradient(m.layers[0])
    for i, (n_in, n_out) in enumerate(((512 * 49, 4096), (4096, 4096), (4096, 1000))):
        fwd = (Kernel("gemm", 2.0 * b * n_in * n_out, dt * (n_in * n_out + b * (n_in + n_out))),
               elementwise(b * n_out, dt))
        m.layers.append(Layer(f"fc{i + 1}", n_in * n_out + n_out, fwd, backward_of(fwd),
                              b * (n_in + n_out) * dt, b * n_out * dt))
    return Model("vgg16", tuple(m.layers), b * 3 * 224 * 224 * dt)


CNN_PRESETS = {
    "resnet50": lambda b, dt: resnet("resnet50", (3, 4, 6, 3), b, dt),
    "resnet101": lambda b, dt: resnet("resnet101", (3, 4, 23, 3), b, dt),
    "vgg16": vgg16,
}
