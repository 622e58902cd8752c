"""Real torch training steps on the host, held out from calibration, against dlsim's
prediction for the same model on the calibrated device (`dlsim validate`, tables host-*).

The torch models are built from dlsim's own shapes so that both sides describe one network:
an MLP as ``workload.mlp_layers`` (linear + ReLU per layer), a GPT as
``workload.transformer_layers`` (token and position embeddings; blocks of layernorm, QKV,
causal attention, projection, residual, layernorm, 4h MLP with GeLU, residual; final
layernorm; tied LM head; cross-entropy) and ResNet-50 as ``cnn.resnet`` (torchvision's v1.5).
A step is zero_grad, forward, loss, backward and the optimizer; its time is the median of
repeats after warm-up. Data-parallel rows run torch DistributedDataParallel over gloo in
local processes (25 MiB buckets), each with the calibrated thread count.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlsim.calibration.bench import free_port, time_call
from dlsim.calibration.store import Calibration
from dlsim.contract.errors import ScenarioError


class MLP(nn.Sequential):
    def __init__(self, widths: list[int]):
        layers: list[nn.Module] = []
        for n_in, n_out in zip(widths, widths[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        super().__init__(*layers[:-1])


class Block(nn.Module):
    def __init__(self, h: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.qkv, self.proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.up, self.down = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = (t.view(b, s, self.heads, h // self.heads).transpose(1, 2)
                   for t in self.qkv(self.ln1(x)).split(h, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, h))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, layers: int, h: int, heads: int, seq: int, vocab: int):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, h), nn.Embedding(seq, h)
        self.blocks = nn.Sequential(*(Block(h, heads) for _ in range(layers)))
        self.ln = nn.LayerNorm(h)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        return self.ln(self.blocks(x)) @ self.tok.weight.T   # tied LM head


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        out = 4 * width
        self.body = nn.Sequential(
            nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out))
        self.short = (nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False),
                                    nn.BatchNorm2d(out))
                      if stride != 1 or c_in != out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.short(x))


class ResNet(nn.Sequential):
    def __init__(self, blocks: tuple[int, ...]):
        layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                   nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        c_in = 64
        for stage, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
            for i in range(count):
                layers.append(Bottleneck(c_in, width, 2 if i == 0 and stage > 0 else 1))
                c_in = 4 * width
        super().__init__(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))


@dataclass(frozen=True)
class HostCase:
    """One held-out model: its dlsim scenario fields and the same model in torch."""

    name: str
    model: dict[str, Any]          # the scenario's model block
    batch: int                     # per process
    optimizer: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # batch -> (input, target)


def _classes(shape: tuple[int, ...], classes: int) -> Callable[[int], tuple]:
    return lambda b: (torch.randn(b, *shape), torch.randint(0, classes, (b,)))


def _tokens(seq: int, vocab: int) -> Callable[[int], tuple]:
    return lambda b: (torch.randint(0, vocab, (b, seq)), torch.randint(0, vocab, (b, seq)))


GPT_SHAPE = {"layers": 2, "hidden": 256, "heads": 4, "seq_len": 128, "vocab": 4096}
MLP_WIDTHS = [1024, 2048, 2048, 256]
CASES = [
    HostCase("mlp 1024-2048-2048-256", {"kind": "mlp", "widths": MLP_WIDTHS}, 64, "sgd",
             lambda: MLP(MLP_WIDTHS), _classes((MLP_WIDTHS[0],), MLP_WIDTHS[-1])),
    HostCase("gpt 2x256 s128", {"kind": "transformer", **GPT_SHAPE}, 4, "adam",
             lambda: GPT(*GPT_SHAPE.values()),
             _tokens(GPT_SHAPE["seq_len"], GPT_SHAPE["vocab"])),
    HostCase("resnet50 224px", {"preset": "resnet50"}, 2, "sgd",
             lambda: ResNet((3, 4, 6, 3)), _classes((3, 224, 224), 1000)),
]
DDP_CASES = [CASES[0], CASES[1]]


def _optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-4)
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)


def _step_fn(case: HostCase, model: nn.Module, batch: int) -> Callable[[], None]:
    opt = _optimizer(case.optimizer, model)
    x, y = case.inputs(batch)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(x)
        F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)).backward()
        opt.step()
    return step


def measure_step(case: HostCase, threads: int, repeats: int) -> float:
    """Median seconds of one training step of ``case`` in this process (process CPU time
    with one thread: bench.clock_for)."""
    torch.manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        step = _step_fn(case, case.build(), case.batch)
        return time_call(step, "cpu", repeats, inner=1).median_s
    finally:
        torch.set_num_threads(previous)


def _ddp_worker(rank: int, world: int, port: int, index: int, threads: int, repeats: int,
                out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    case = DDP_CASES[index]
    torch.manual_seed(0)
    model = DistributedDataParallel(case.build(), bucket_cap_mb=25)
    step = _step_fn(case, model, case.batch)
    dist.barrier()
    t = time_call(step, "cpu", repeats, inner=1, clock="wall")  # includes the all-reduce
    worst = torch.tensor([t.median_s], dtype=torch.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    if rank == 0:
        Path(out).write_text(json.dumps(float(worst[0])))
    dist.barrier()  # nobody tears gloo down while a peer still talks to it
    dist.destroy_process_group()


def measure_ddp(index: int, world: int, threads: int, repeats: int, attempts: int = 2) -> float:
    """Median seconds per DDP step of ``DDP_CASES[index]`` over ``world`` local processes
    (the slowest rank's median). gloo occasionally aborts a worker at teardown: a result
    written before that stands; a run that died before it is retried once, then reported."""
    import torch.multiprocessing as mp

    for _ in range(attempts):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "t.json"
            try:
                mp.spawn(_ddp_worker, args=(world, free_port(), index, threads, repeats,
                                            str(out)), nprocs=world)
            except mp.ProcessExitedException:
                pass
            if out.exists():
                return json.loads(out.read_text())
    raise ScenarioError(f"the DDP measurement of '{DDP_CASES[index].name}' lost a worker "
                        f"process {attempts} times (gloo over loopback); rerun dlsim validate "
                        "--host on a quieter machine.", field="--host")


def scenario(case: HostCase, calibration: Calibration, path: str, ranks: int = 1,
             force: bool = False) -> dict[str, Any]:
    """The dlsim scenario of ``case`` on the calibrated device; data-parallel ranks are
    joined by the loopback link the calibration fitted."""
    if ranks == 1:
        cluster: dict[str, Any] = {"device": calibration.profile, "devices_per_node": 1,
                                   "intra_node": "pcie"}
    else:
        link = calibration.link
        assert link is not None, "multi-rank host runs need a calibration with a fitted link"
        cluster = {"topology": "fully-connected", "devices": ranks, "device": calibration.profile,
                   "link": {"bandwidth_GBps": link.bandwidth_GBps, "latency_us": link.latency_us}}
    cluster |= {"calibration": path, "force_calibration": force}
    return {"name": f"host {case.name}", "model": case.model, "cluster": cluster,
            "precision": "fp32", "parallelism": {"data": ranks},
            "training": {"global_batch": case.batch * ranks, "optimizer": case.optimizer,
                         "bucket_cap_mb": 25}}


def host_calibration(path: str | None, force: bool) -> tuple[Calibration, str]:
    """The calibration to validate against: ``path``, or this host's own file under
    calibration/; one measured on another device is refused unless ``force``."""
    from dlsim.calibration import bench, store
    from dlsim.calibration.calibrate import default_threads

    if path is None:
        mine = bench.fingerprint(bench.host_info("cpu", default_threads("cpu")))
        candidate = store.resolve(f"calibration/{mine}.json")
        if not candidate.exists():
            raise ScenarioError(f"there is no calibration of this host (fingerprint {mine}) "
                                "under calibration/; run `dlsim calibrate` first, or pass "
                                "--calibration FILE.", field="--calibration")
        path = str(candidate)
    calibration = store.load(path)
    here = bench.fingerprint(bench.host_info("cpu", calibration.host.threads))
    store.check_fingerprint(calibration, here, force, path=path, field="--calibration")
    if calibration.host.kind != "cpu":
        raise ScenarioError("host rows run torch on the CPU; give a CPU calibration.",
                            field="--calibration")
    return calibration, path


def run_host(path: str | None = None, force: bool = False, repeats: int = 5,
             progress: bool = True) -> list[tuple[str, str, float, float]]:
    """(table, case, predicted_s, measured_s) for every held-out model on this host, single
    process (host-training) and DDP over two local processes (host-ddp; twice the repeats,
    since its wall clock is exposed to the host's other processes)."""
    from rich.console import Console
    from rich.progress import Progress

    from dlsim.simulate import simulate

    calibration, path = host_calibration(path, force)
    threads = calibration.host.threads
    ranks = 2 if calibration.link is not None else 0
    rows = []
    with Progress(console=Console(stderr=True), disable=not progress) as bar:
        total = len(CASES) + (len(DDP_CASES) if ranks else 0)
        task = bar.add_task("host training steps", total=total)
        for case in CASES:
            predicted = simulate(scenario(case, calibration, path, force=force)).step_time_s
            rows.append(("host-training", f"{case.name} b{case.batch} {case.optimizer}",
                         predicted, measure_step(case, threads, repeats)))
            bar.advance(task)
        for i, case in enumerate(DDP_CASES if ranks else []):
            predicted = simulate(scenario(case, calibration, path, ranks, force)).step_time_s
            rows.append(("host-ddp", f"{case.name} b{case.batch}x{ranks} {case.optimizer} gloo",
                         predicted, measure_ddp(i, ranks, threads, 2 * repeats)))
            bar.advance(task)
    return rows
