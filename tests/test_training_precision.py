"""Precision policy: bf16 only where the device computes it natively, recorded with every
run and in the config hash as the resolved value; old `train.amp` configs are refused."""

import json

import pytest
import torch
from helpers import tiny_config

from cifarnet.config.schema import Precision, RunConfig, build_config
from cifarnet.errors import ConfigError
from cifarnet import hardware as dev
from cifarnet.training.device import in_layout
from cifarnet.training.callbacks import Callback
from cifarnet.training.loop import METRICS, train

CPU = torch.device("cpu")


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Point the detection at a fake /proc/cpuinfo holding the given flags."""
    def write(flags: str | None) -> None:
        path = tmp_path / "cpuinfo"
        if flags is not None:
            path.write_text(f"processor\t: 0\nmodel name\t: Fake\nflags\t\t: {flags}\n\n")
        monkeypatch.setattr(dev, "CPUINFO", path)
        dev.cpu_flags.cache_clear()
    yield write
    dev.cpu_flags.cache_clear()


@pytest.mark.parametrize("flags, want", [
    ("fpu sse2 avx2 avx512f avx512bw", Precision.FP32),
    ("fpu sse2 avx2 avx512f avx512_bf16", Precision.BF16),
    ("fpu sse2 avx2 amx_tile amx_bf16", Precision.BF16),
    ("fpu sse2 avx2 avx512_bf16x", Precision.FP32),  # a lookalike flag is not the flag
    (None, Precision.FP32),  # no /proc/cpuinfo (macOS, Windows): fp32
])
def test_auto_picks_bf16_only_on_cpus_that_have_it(cpuinfo, flags, want) -> None:
    cpuinfo(flags)
    assert dev.resolve_precision("auto", CPU) == want


def test_explicit_choices_are_kept(cpuinfo) -> None:
    cpuinfo("avx512_bf16")
    assert dev.resolve_precision("fp32", CPU) == Precision.FP32
    cpuinfo("avx2")
    assert dev.resolve_precision("bf16", CPU) == Precision.BF16


def test_auto_is_fp32_on_devices_without_native_bf16(monkeypatch) -> None:
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    assert dev.resolve_precision("auto", torch.device("mps")) == Precision.FP32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.resolve_precision("auto", torch.device("cuda")) == Precision.FP32


def test_hash_holds_the_resolved_precision(monkeypatch) -> None:
    cfg = build_config({"train.device": "cpu"})
    fp32 = cfg.replace({"train.precision": "fp32"}).hash()
    bf16 = cfg.replace({"train.precision": "bf16"}).hash()
    assert fp32 != bf16
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    assert cfg.hash() == fp32
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    assert cfg.hash() == bf16


def test_a_grid_continued_on_a_machine_of_another_precision_is_another_grid(monkeypatch) -> None:
    """A store carried to a machine where `auto` resolves otherwise (the committed
    results/store, made on a CPU without AVX512-BF16): the same spec there is another grid,
    with its own parent, queue and jobs, so no cell ever pairs an fp32 run with a bf16 run;
    `--set train.precision=fp32` there continues the fp32 grid's jobs."""
    from cifarnet.ablation.execute import grid_id
    from cifarnet.spec.ablation import load_spec

    spec = load_spec("dilation_add").with_sets(["train.device=cpu"])
    ids, jobs = {}, {}
    for native in (False, True):
        monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda native=native: native)
        ids[native] = grid_id(spec)
        jobs[native] = {j.config_hash for j in spec.jobs()}
    assert ids[False] != ids[True] and not jobs[False] & jobs[True]
    fp32 = spec.with_sets(["train.precision=fp32"])
    assert {j.config_hash for j in fp32.jobs()} == jobs[False]


def test_retired_amp_key_is_refused_naming_its_replacement() -> None:
    with pytest.raises(ConfigError, match=r"^train\.amp: replaced by train\.precision"):
        build_config({"train": {"amp": True}})


def test_precision_values_are_checked() -> None:
    with pytest.raises(ConfigError, match="train.precision: expected one of auto, fp32, bf16"):
        build_config({"train.precision": "fp16"})
    cfg = build_config({"train.precision": "bf16"})
    assert cfg.train.precision is Precision.BF16
    assert RunConfig().to_dict()["train"]["precision"] == "auto"
    assert type(RunConfig().to_dict()["train"]["precision"]) is str  # YAML-safe


class Seen(Callback):
    def on_run_start(self, ctx):
        self.precision = ctx.precision


def test_bf16_run_keeps_statistics_and_optimiser_state_in_fp32(tiny_tree, tmp_path) -> None:
    cfg = tiny_config(tiny_tree, tmp_path, {"train.precision": "bf16"})
    seen = Seen()
    result = train(cfg, [seen])
    assert result.status == "finished" and seen.precision == "bf16"
    assert json.loads((result.run_dir / METRICS).read_text())["precision"] == "bf16"
    ckpt = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)
    assert {v.dtype for v in ckpt["model"].values() if v.is_floating_point()} == {torch.float32}
    state = [t for s in ckpt["optimizer"]["state"].values() for t in s.values()
             if torch.is_tensor(t) and t.is_floating_point()]
    assert state and {t.dtype for t in state} == {torch.float32}


def test_bf16_and_fp32_runs_differ(tiny_tree, tmp_path) -> None:
    """bf16 really reaches the step: the two precisions give different losses."""
    def loss(precision: str) -> float:
        cfg = tiny_config(tiny_tree, tmp_path / precision, {"train.precision": precision})
        return train(cfg).final["train_loss"]

    assert loss("bf16") != loss("fp32")


def test_channels_last_off_trains(tiny_tree, tmp_path) -> None:
    """preserve_format (channels_last off, or MPS) leaves tensors as they are; before,
    `Tensor.contiguous(memory_format=preserve_format)` raised in the first step."""
    cfg = tiny_config(tiny_tree, tmp_path, {"train.channels_last": False})
    assert train(cfg).status == "finished"
    x = torch.zeros(2, 3, 4, 4)
    assert in_layout(x, torch.preserve_format) is x
    assert in_layout(x, torch.channels_last).is_contiguous(memory_format=torch.channels_last)


def test_unknown_device_is_one_line_naming_the_key() -> None:
    """The hash resolves `auto` precision on the device, so a bad device string must be a
    ConfigError there (it was a RuntimeError traceback at the start of training)."""
    with pytest.raises(ConfigError, match=r"^train\.device: expected auto, cpu, mps, cuda, "
                                          r"cuda:N, xpu or xpu:N, got 'gpu0'$"):
        build_config({"train.device": "gpu0"})  # refused where it is parsed, before any hash
