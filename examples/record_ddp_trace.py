"""Record the execution trace of one PyTorch DDP training step on this CPU, for
``model: {trace: ...}``.

    python examples/record_ddp_trace.py OUT [--widths 1024,2048,2048,256] [--batch 64]
    # writes OUT/ddp_mlp_et_0.json and OUT/ddp_mlp_et_1.json

``examples/traces/ddp_mlp_et_0.json`` is rank 0's trace of
``--widths 32,2048,2048,32 --batch 2048``, compacted (``compact``: no strides, no attributes
but ``rf_id`` and ``op_schema``, no indentation) to keep it small.

Two local processes (gloo, one thread each) train an MLP of ``WIDTHS`` (linear + ReLU, as
dlsim's ``kind: mlp`` builds one) on ``BATCH`` samples per rank with cross-entropy and SGD
with momentum, as ``dlsim validate --host``'s host-ddp row does. One step warms up (DDP
builds its buckets, SGD its momentum buffers); the next is recorded by
``torch.profiler.ExecutionTraceObserver``, and with ``kineto=True`` also by
``torch.profiler.profile`` (its chrome trace holds each operator's measured time).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

WIDTHS = [1024, 2048, 2048, 256]
BATCH = 64


def mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(widths, widths[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
          y: torch.Tensor) -> None:
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def _rank(rank: int, world: int, port: int, out: str, widths: list[int], batch: int,
          kineto: bool) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(rank)
    model = nn.parallel.DistributedDataParallel(mlp(widths))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(batch, widths[0]), torch.randint(0, widths[-1], (batch,))
    _step(model, opt, x, y)  # warm-up
    observer = torch.profiler.ExecutionTraceObserver()
    observer.register_callback(f"{out}/ddp_mlp_et_{rank}.json")
    if kineto:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    execution_trace_observer=observer) as prof:
            _step(model, opt, x, y)
        prof.export_chrome_trace(f"{out}/ddp_mlp_kineto_{rank}.json")
    else:
        observer.start()
        _step(model, opt, x, y)
        observer.stop()
        observer.unregister_callback()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def record(out: str | Path, widths: list[int] = WIDTHS, batch: int = BATCH, world: int = 2,
           kineto: bool = False, start_method: str = "spawn") -> Path:
    """Record one step on ``world`` local ranks into ``out``; returns the folder. A caller
    that has imported torch already may pass ``start_method="fork"`` to skip the import in
    each rank."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_rank, args=(world, free_port(), str(out), widths, batch, kineto),
                       nprocs=world, start_method=start_method)
    return out


def compact(path: str | Path) -> None:
    """Rewrite a trace without what a replay does not read: strides, attributes other than
    ``rf_id`` and ``op_schema``, and indentation (about half the size)."""
    data = json.loads(Path(path).read_text())
    for node in data["nodes"]:
        for side in ("inputs", "outputs"):
            node[side].pop("strides", None)
        node["attrs"] = [a for a in node.get("attrs", [])
                         if a["name"] in ("rf_id", "op_schema") and a["value"] != ""]
    Path(path).write_text(json.dumps(data, separators=(",", ":")))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--widths", default=",".join(map(str, WIDTHS)))
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--compact", action="store_true")
    args = parser.parse_args()
    folder = record(args.out, [int(w) for w in args.widths.split(",")], args.batch)
    if args.compact:
        for trace in folder.glob("ddp_mlp_et_*.json"):
            compact(trace)
