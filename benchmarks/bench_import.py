"""Import speed of a torch model: a 1.3B-parameter GPT (GPT-3 XL's shape, Brown et al. 2020
Table 2.1: 24 layers, hidden 2048, 16 heads, sequence 2048; GPT-2's vocabulary) from
examples/tiny_gpt.py, built on the meta device and run forward and backward once.

Run: python benchmarks/bench_import.py  (prints the figure the report and docs quote; the
issue asks for under 10 s on the development machine).
"""

from __future__ import annotations

import time

from dlsim.workload.torch_import import import_torch_model

GPT3_XL = {"layers": 24, "hidden": 2048, "heads": 16, "seq_len": 2048, "vocab": 50257}
INPUTS = {"ids": {"shape": [1, 2048], "dtype": "int64"}}


def main() -> None:
    import_torch_model("tiny_gpt:tiny_gpt", GPT3_XL | {"layers": 1}, INPUTS, 1, 2)  # warm up
    for microbatch in (1, 8):
        start = time.perf_counter()
        model = import_torch_model("tiny_gpt:tiny_gpt", GPT3_XL, INPUTS, microbatch, 2)
        wall = time.perf_counter() - start
        kernels = sum(len(layer.forward) + len(layer.backward) for layer in model.layers)
        flops = sum(k.flops for layer in model.layers for k in (*layer.forward,
                                                                  *layer.backward))
        print(f"{model.parameters / 1e9:.3f}B parameters, micro-batch {microbatch}: "
              f"{len(model.layers)} layers, {kernels} kernels, {flops / 1e12:.1f} TFLOP per "
              f"step, imported in {wall:.2f} s")


if __name__ == "__main__":
    main()
