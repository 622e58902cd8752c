"""A torch ``nn.Module`` as dlsim layers, measured by running it once on the meta device.

``import_torch_model("pkg.mod:factory", kwargs, inputs, microbatch, dtype_bytes)`` builds the
module under ``torch.device("meta")`` (shapes without storage: a 1B-parameter model costs no
memory), runs one forward and one backward of ``output.float().sum()``, and records every aten
operator both passes dispatch (a ``TorchDispatchMode``), which is what eager PyTorch launches:

- FLOPs of matrix products, convolutions and fused attention come from the formulas
  ``torch.utils.flop_counter.FlopCounterMode`` uses (its ``flop_registry``), so the totals
  are FlopCounterMode's; every other operator is an element-wise kernel of as many FLOPs as
  its output has elements (dlsim's convention, ``dlsim.workload.model.elementwise``).
- Kind: a convolution is ``conv``; a matrix product of two activations (neither operand a
  weight: QK^T and AV) and anything run inside ``F.scaled_dot_product_attention`` are
  ``attention``; other matrix products are ``gemm``. A backward operator takes the kind of
  the forward operator whose autograd node runs it, so a weight-gradient GEMM stays ``gemm``.
- Bytes moved: every tensor an operator reads and writes, once; views move nothing.
  Floating-point tensors count ``dtype_bytes`` per element (the model is built in fp32 and
  priced at the scenario's precision), integer tensors their own size.
- Activation bytes: the tensors autograd saves for backward
  (``torch.autograd.graph.saved_tensors_hooks``), each storage once, weights excluded,
  charged to the layer whose operator saved it.

Layers are the root's children, with ``nn.ModuleList`` / ``nn.Sequential`` / ``nn.ModuleDict``
containers (and modules holding a stack of repeated blocks) opened up. An operator run by the
root's own ``forward`` between two layers belongs to the layer before it (the first layer if
none ran yet): a tied LM head's ``F.linear(x, embedding.weight)`` lands in the layer that ran
last, the final norm. Backward operators belong to the layer of their forward operator.

A transformer block is a module repeated (the same class, two or more) in a container whose
forward ran attention: it gets ``role="block"`` and ``BlockActivations`` so that pipeline
parallelism cuts between blocks and recomputation knows what it drops (the attention core:
tensors produced by softmax, dropout or fused attention). Tensor parallelism is refused for
imported models (``dlsim.parallel.tensor``): splitting needs each GEMM's role in Megatron-LM's
column/row pattern, which operators recorded on the meta device do not carry.

The micro-batch is the first dimension of every input: ``inputs: {ids: {shape: [1, 1024],
dtype: int64}}`` runs with ``[microbatch, 1024]``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlsim.contract.errors import ScenarioError
from dlsim.data import ROOT
from dlsim.workload.model import BlockActivations, Kernel, Layer, Model

FIELD = "model.torch"
INSTALL = "pip install 'dlsim[calibrate]'"
EXAMPLES = ROOT / "examples"  # bundled example modules (examples/tiny_gpt.py)
CONTAINERS = ("ModuleList", "Sequential", "ModuleDict")
MATMULS = frozenset({"mm", "bmm", "addmm", "baddbmm", "matmul"})
CONVS = frozenset({"convolution", "_convolution", "convolution_backward", "_slow_conv2d_forward",
                   "cudnn_convolution", "convolution_overrideable"})
ATTENTION_CORE_OPS = frozenset({"_softmax", "_safe_softmax", "softmax", "native_dropout",
                                "dropout"})
NO_DATA = frozenset({"detach", "alias", "lift_fresh", "_unsafe_view"})  # views in all but name


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ScenarioError(f"importing a torch model needs torch, which is not installed: "
                            f"{INSTALL}.", field=FIELD) from exc
    return torch


@contextmanager
def _search_path() -> Iterator[None]:
    """The current directory and dlsim's bundled examples/ folder, after sys.path, for the
    length of the import only."""
    extra = [p for p in (str(Path.cwd()), str(EXAMPLES)) if p not in sys.path]
    sys.path.extend(extra)
    try:
        yield
    finally:
        for p in extra:
            sys.path.remove(p)


def load_factory(target: str) -> Any:
    """The callable named by ``package.module:factory``."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ScenarioError(f"'{target}' is not of the form 'package.module:factory'.",
                            field=FIELD)
    _torch()
    with _search_path():
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # not found, or the user's module failed to import
            raise ScenarioError(f"cannot import '{module_name}' for '{target}' ({exc}); the "
                                "module is looked up on sys.path, in the current directory "
                                f"and in dlsim's bundled examples ({EXAMPLES}).",
                                field=FIELD) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ScenarioError(f"module '{module_name}' has no callable '{attr}'; it has "
                            f"{', '.join(n for n in dir(module) if not n.startswith('_'))}.",
                            field=FIELD)
    return factory


@dataclass
class _LayerRecord:
    name: str
    module: Any
    forward: list[Kernel] = field(default_factory=list)
    backward: list[Kernel] = field(default_factory=list)
    saved_bytes: float = 0.0
    attention_core_bytes: float = 0.0
    input_bytes: float = 0.0
    output_bytes: float = 0.0
    ran_attention: bool = False


def _units(root: Any) -> tuple[list[tuple[str, Any]], set[int]]:
    """The modules that become layers, in definition order, and the ids of those that sit
    in a stack of repeated modules (block candidates)."""
    def stack_of(module: Any) -> bool:
        if type(module).__name__ not in CONTAINERS:
            return False
        kinds = [type(c) for c in module.children() if any(True for _ in c.children())]
        return any(kinds.count(k) >= 2 for k in kinds)

    units: list[tuple[str, Any]] = []
    stacked: set[int] = set()

    def walk(prefix: str, module: Any) -> None:
        repeated = stack_of(module)
        for name, child in module.named_children():
            opens = (type(child).__name__ in CONTAINERS
                     or any(stack_of(m) for m in child.modules()))
            if opens and any(True for _ in child.children()):
                walk(f"{prefix}{name}.", child)
                continue
            units.append((f"{prefix}{name}", child))
            if repeated:
                stacked.add(id(child))

    walk("", root)
    return (units or [(type(root).__name__, root)]), stacked


class _Recorder:
    """What one forward and backward dispatch, by layer."""

    def __init__(self, torch: Any, root: Any, dtype_bytes: int) -> None:
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils.flop_counter import flop_registry

        self.torch, self.dtype_bytes, self.flops = torch, dtype_bytes, flop_registry
        self.storage = StorageWeakRef
        units, self.stacked = _units(root)
        self.layers = [_LayerRecord(name, module) for name, module in units]
        self.weights = {self.storage(p.untyped_storage()) for p in root.parameters()}
        self.saved: set[Any] = set()
        self.produced_by: dict[Any, str] = {}
        self.stack: list[int] = []
        self.last = -1  # the layer that ran last in forward
        self.node_of: dict[Any, tuple[int, str]] = {}
        self.pending: list[tuple[Any, int, str]] = []  # forward outputs not yet tagged
        self.in_sdpa = 0
        self.op_layer = 0

    def nbytes(self, t: Any) -> float:
        per = self.dtype_bytes if t.is_floating_point() else t.element_size()
        return float(t.numel() * per)

    def current(self) -> int:
        if self.stack:
            return self.stack[-1]
        return self.last if self.last >= 0 else 0

    def tensors(self, value: Any) -> list[Any]:
        leaves = self.torch.utils._pytree.tree_leaves(value)
        return [t for t in leaves if isinstance(t, self.torch.Tensor)]

    def is_weight(self, t: Any) -> bool:
        return self.storage(t.untyped_storage()) in self.weights

    def kernel(self, func: Any, args: Any, kwargs: Any, out: Any) -> Kernel | None:
        op = func._overloadpacket.__name__
        if func.is_view or op in NO_DATA:
            return None
        packet = func._overloadpacket
        moved = sum(self.nbytes(t) for t in self.tensors((args, kwargs, out)))
        if packet in self.flops:
            flops = float(self.flops[packet](*args, **kwargs, out_val=out))
            if op in CONVS:
                kind = "conv"
            elif "attention" in op or self.in_sdpa:
                kind = "attention"
            elif op in MATMULS and not any(self.is_weight(t) for t in self.tensors(args)):
                kind = "attention"
            else:
                kind = "gemm"
        else:
            outputs = self.tensors(out)
            flops = float(max((t.numel() for t in outputs), default=0))
            kind = "elementwise"
        return Kernel(kind, flops, moved, op)

    def forward_op(self, func: Any, args: Any, kwargs: Any, out: Any) -> None:
        self.tag_pending()
        index = self.current()
        self.op_layer = index
        kernel = self.kernel(func, args, kwargs, out)
        for t in self.tensors(out):
            self.produced_by.setdefault(self.storage(t.untyped_storage()),
                                        func._overloadpacket.__name__)
        kind = "elementwise" if kernel is None else kernel.kind  # a view's backward too
        self.pending += [(t, index, kind) for t in self.tensors(out)]
        if kernel is None:
            return
        layer = self.layers[index]
        layer.forward.append(kernel)
        layer.ran_attention |= kernel.kind == "attention"

    def tag_pending(self) -> None:
        """Autograd sets an output's node after the operator returns: read it now."""
        for t, index, kind in self.pending:
            if t.grad_fn is not None:
                self.node_of.setdefault(t.grad_fn, (index, kind))
        self.pending.clear()

    def backward_op(self, func: Any, args: Any, kwargs: Any, out: Any) -> None:
        node = self.torch._C._current_autograd_node()
        if node is not None and "AccumulateGrad" in node.name():
            return  # writing .grad: the gradient buffers are dlsim's optimizer model's
        index, kind = self.node_of.get(node, (self.op_layer, ""))
        self.op_layer = index
        kernel = self.kernel(func, args, kwargs, out)
        if kernel is None:
            return
        if kind and kernel.kind != "elementwise":
            kernel = Kernel(kind, kernel.flops, kernel.bytes, kernel.name)
        self.layers[index].backward.append(kernel)

    def pack(self, t: Any) -> Any:
        """A tensor autograd saves for backward, charged once to the layer saving it."""
        key = self.storage(t.untyped_storage())
        if key in self.weights or key in self.saved:
            return t
        self.saved.add(key)
        elements = t.untyped_storage().nbytes() / max(t.element_size(), 1)
        size = elements * (self.dtype_bytes if t.is_floating_point() else t.element_size())
        layer = self.layers[self.current()]  # autograd saves inputs before the op runs
        layer.saved_bytes += size
        producer = self.produced_by.get(key, "")
        if producer in ATTENTION_CORE_OPS or "attention" in producer:
            layer.attention_core_bytes += size
        return t


def _hooks(rec: _Recorder) -> list[Any]:
    handles = []
    for index, layer in enumerate(rec.layers):
        def pre(module: Any, args: Any, index: int = index) -> None:
            rec.tag_pending()
            if not rec.stack:
                rec.layers[index].input_bytes = sum(rec.nbytes(t) for t in rec.tensors(args))
            rec.stack.append(index)

        def post(module: Any, args: Any, output: Any, index: int = index) -> None:
            rec.tag_pending()
            rec.stack.pop()
            if not rec.stack:
                rec.last = index
                rec.layers[index].output_bytes = sum(rec.nbytes(t)
                                                     for t in rec.tensors(output))
        handles += [layer.module.register_forward_pre_hook(pre),
                    layer.module.register_forward_hook(post)]
    return handles


def _make_inputs(torch: Any, inputs: Mapping[str, Any], microbatch: int) -> dict[str, Any]:
    out = {}
    for name, spec in inputs.items():
        shape = [microbatch, *list(spec["shape"])[1:]]
        dtype = getattr(torch, spec.get("dtype", "float32"))
        out[name] = torch.zeros(shape, dtype=dtype, device="meta")  # data: no gradient
    return out


def _record(torch: Any, module: Any, inputs: dict[str, Any], dtype_bytes: int) -> _Recorder:
    from torch.utils._python_dispatch import TorchDispatchMode

    rec = _Recorder(torch, module, dtype_bytes)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    class Dispatch(TorchDispatchMode):
        backward = False

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            (rec.backward_op if self.backward else rec.forward_op)(func, args, kwargs, out)
            return out

    class Functions(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            rec.in_sdpa += func is sdpa
            try:
                return func(*args, **(kwargs or {}))
            finally:
                rec.in_sdpa -= func is sdpa

    handles = _hooks(rec)
    mode = Dispatch()
    try:
        with torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t), \
                Functions(), mode:
            output = module(**inputs)
            loss = torch.utils._pytree.tree_leaves(output)[0].float().sum()
            rec.tag_pending()
        mode.backward = True
        with mode:
            loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    return rec


def _layers(rec: _Recorder, root: Any) -> list[Layer]:
    """Layers that ran or hold weights; a weight shared by two layers (a tied embedding)
    counts in the first, and the root's own weights (outside every layer) in the last."""
    records = [r for r in rec.layers if r.forward or r.backward
               or any(True for _ in r.module.parameters())]
    seen: set[int] = set()
    params = []
    for record in records:
        own = [p for p in record.module.parameters() if id(p) not in seen]
        seen |= {id(p) for p in own}
        params.append(sum(p.numel() for p in own))
    params[-1] += sum(p.numel() for p in root.parameters() if id(p) not in seen)
    out = []
    for record, count in zip(records, params):
        is_block = id(record.module) in rec.stacked and record.ran_attention
        block = (BlockActivations(record.attention_core_bytes, record.input_bytes, 0.0)
                 if is_block else None)
        out.append(Layer(record.name, count, tuple(record.forward), tuple(record.backward),
                         record.saved_bytes, record.output_bytes, block=block,
                         role="block" if is_block else "other"))
    return out


def import_torch_model(target: str, kwargs: Mapping[str, Any], inputs: Mapping[str, Any],
                       microbatch: int, dtype_bytes: int) -> Model:
    """The layers of ``factory(**kwargs)`` for one micro-batch of ``microbatch`` samples."""
    torch = _torch()
    factory = load_factory(target)
    try:
        with torch.device("meta"):
            module = factory(**kwargs)
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"it returned a {type(module).__name__}, not a torch.nn.Module")
        return model_from_module(module, inputs, microbatch, dtype_bytes, target)
    except ScenarioError:
        raise
    except Exception as exc:  # the user's code: say which step failed and why
        raise ScenarioError(f"'{target}' with kwargs {dict(kwargs)} and inputs "
                            f"{dict(inputs)} could not be built and run on the meta device: "
                            f"{type(exc).__name__}: {exc}", field=FIELD) from exc


def model_from_module(module: Any, inputs: Mapping[str, Any], microbatch: int,
                      dtype_bytes: int, name: str = "") -> Model:
    """The layers of a module built on the meta device, run on ``inputs``."""
    torch = _torch()
    batch = _make_inputs(torch, inputs, microbatch)
    rec = _record(torch, module, batch, dtype_bytes)
    return Model(name or type(module).__name__, tuple(_layers(rec, module)),
                 sum(rec.nbytes(t) for t in batch.values()))


KINDS = {"gemm": "gemm", "attention": "attn", "conv": "conv", "elementwise": "elem"}


def layer_rows(model: Model) -> list[dict[str, Any]]:
    """The layer table ``dlsim import-model`` prints: GFLOP of the forward and backward
    passes, and of both by kernel kind; MB moved by both passes and saved for backward."""
    rows = []
    for layer in model.layers:
        kernels = (*layer.forward, *layer.backward)
        rows.append({"layer": layer.name, "role": layer.role, "params": layer.params,
                     "fwd_GFLOP": sum(k.flops for k in layer.forward) / 1e9,
                     "bwd_GFLOP": sum(k.flops for k in layer.backward) / 1e9,
                     **{f"{short}_GFLOP": sum(k.flops for k in kernels if k.kind == kind) / 1e9
                        for kind, short in KINDS.items()},
                     "moved_MB": sum(k.bytes for k in kernels) / 1e6,
                     "saved_MB": layer.activation_bytes / 1e6})
    return rows


def parallelism_note(model: Model) -> str:
    """What the layers allow: pipeline cuts, and why tensor parallelism is refused."""
    blocks = sum(layer.block is not None for layer in model.layers)
    cut = (f"{blocks} transformer blocks recognised: pipeline stages cut between them"
           if blocks else "no transformer blocks recognised: pipeline stages cut into "
           "layers of equal time")
    return (f"{cut}; data parallelism applies; tensor parallelism is refused for imported "
            "models (the recorded operators do not say which GEMMs Megatron-LM splits by "
            "column and which by row).")
