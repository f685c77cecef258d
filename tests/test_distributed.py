"""Distributed training on 2 CPU processes (gloo), started for real: `audit train --nproc-per-node 2` and torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from audit.cli import without_flag
from tests.conftest import make_loans, read_report

# Only the plugins a claim needs: the other audits (rank 0's, after training) would cost time and test nothing here.
PLUGINS = "privacy,fairness"
PLUGIN_FLAGS = ("--mia-reference-models", "0", "--mia-samples", "50")
TIMING = ("_time", "_s", "per_s", "latency", "rss", "memory")


@pytest.fixture(scope="module")
def loans(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "loans.csv"
    make_loans(n=400).to_csv(path, index=False)
    return path


def _env(plugins: str = PLUGINS, **extra: str) -> dict[str, str]:
    env = {**os.environ, "AUDIT_PLUGINS": plugins, "OMP_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path.cwd()), env.get("PYTHONPATH", "")]))
    return env


def _train(
    loans: Path, out: Path, *flags: str, nproc: int = 2, plugins: str = PLUGINS, **env: str
) -> subprocess.CompletedProcess:
    """``python -m audit train`` on the loans table (a small MLP, 3 epochs), on ``nproc`` processes."""
    # gloo on the CPU, also where a GPU is present (two processes would need two GPUs under NCCL)
    args = ["--data", loans, "--target", "defaulted", "--sensitive", "sex", "--hidden", "16", "--epochs", "3"]
    args += ["--device", "cpu"]
    args += [*(PLUGIN_FLAGS if "privacy" in plugins else ()), "--quiet", "--out", out, *flags]
    command = [sys.executable, "-m", "audit", "train", *map(str, args), "--nproc-per-node", str(nproc)]
    return subprocess.run(command, capture_output=True, text=True, env=_env(plugins, **env), timeout=300)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


def _untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not any(t in k for t in TIMING)}


def _assert_same_model(a: Path, b: Path, atol: float) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=0)


def test_two_processes_train_the_same_model_as_one(loans, tmp_path):
    """DDP on shards of the global batch, with each rank's loss scaled to its share, is one process's step."""
    one, two = tmp_path / "one", tmp_path / "two"
    for out, nproc in ((one, 1), (two, 2)):
        done = _train(loans, out, nproc=nproc, plugins="")
        assert done.returncode == 0, done.stderr
    r1, r2 = read_report(one), read_report(two)
    assert r1["run"]["world_size"] == 1 and "distributed" not in r1["run"]
    assert r2["run"]["world_size"] == 2 and r2["run"]["distributed"]["backend"] == "gloo"
    rates = r2["run"]["distributed"]
    assert rates["train_samples_per_s_per_rank"] == pytest.approx(rates["train_samples_per_s"] / 2)
    metrics = r2["metrics"]
    assert metrics["efficiency.world_size"] == 2 and "efficiency.world_size" not in r1["metrics"]
    per_rank = metrics["efficiency.train_samples_per_s_per_rank"]
    assert per_rank == pytest.approx(metrics["efficiency.train_samples_per_s"] / 2)
    # float sums in another order: the same model to rounding, so the same audit
    _assert_same_model(one, two, atol=1e-5)
    assert r2["metrics"]["performance.accuracy"] == r1["metrics"]["performance.accuracy"]
    notes = next(s for s in r2["sections"] if s["name"] == "performance")["notes"]
    assert any("--batch-size" in n and "global batch" in n for n in notes)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())  # one set, rank 0's


@pytest.mark.slow
def test_same_seed_and_world_size_give_the_same_report_with_reweighing(loans, tmp_path):
    """Two 2-process runs with noisy reweighing counts: identical metrics (timings aside) and weights."""
    flags = ("--fairness", "reweight", "--reweight-epsilon", "1.0")
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        done = _train(loans, out, *flags)
        assert done.returncode == 0, done.stderr
    ra, rb = read_report(first), read_report(second)
    assert _untimed(ra["metrics"]) == _untimed(rb["metrics"])
    assert any(k.startswith("fairness.") for k in ra["metrics"])
    _assert_same_model(first, second, atol=0.0)


DP_FLAGS = ("--dp", "--noise-multiplier", "1.0", "--batch-size", "40")


@pytest.fixture(scope="module")
def dp_two(loans, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dp") / "two"
    done = _train(loans, out, *DP_FLAGS, plugins="privacy")
    assert done.returncode == 0, done.stderr
    return out


def test_dp_sgd_on_two_processes_reports_the_global_guarantee(dp_two):
    """Global Poisson rate: the reported (q, sigma, steps) give the reported epsilon by dp-accounting's PLD."""
    import dp_accounting

    two = dp_two
    m2 = read_report(two)["metrics"]
    q, sigma, steps = (m2[f"privacy.{k}"] for k in ("sample_rate", "noise_multiplier", "steps"))
    train_rows = read_report(two)["run"]["data"]["rows"]["train"]
    assert q == pytest.approx(40 / train_rows) and sigma == 1.0
    accountant = dp_accounting.pld.PLDAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    assert m2["privacy.epsilon"] == pytest.approx(accountant.get_epsilon(m2["privacy.delta"]), rel=0.02)
    notes = next(s for s in read_report(two)["sections"] if s["name"] == "performance")["notes"]
    assert any("the clipped sums are all-reduced" in n for n in notes)


@pytest.mark.slow
def test_dp_sgd_on_two_processes_trains_one_process_model(loans, dp_two, tmp_path):
    """Clipped sums all-reduced, noise once for the global batch: the steps, epsilon and model of one process."""
    one, two = tmp_path / "one", dp_two
    done = _train(loans, one, *DP_FLAGS, nproc=1, plugins="privacy")
    assert done.returncode == 0, done.stderr
    m1, m2 = read_report(one)["metrics"], read_report(two)["metrics"]
    for key in ("epsilon", "steps", "sample_rate", "clip_rate_last_epoch"):
        assert m2[f"privacy.{key}"] == pytest.approx(m1[f"privacy.{key}"])
    # the same global batches and the same noise draw: one process's model, to float rounding
    _assert_same_model(one, two, atol=1e-5)


WORKER = """
import json, sys
import torch, torch.distributed as dist
from audit.config import build_config
from audit.distributed import process_group
from audit.engine import TrainingStep
from audit.data import load_dataset
from audit.plugins import get_plugin_manager
from audit.runner import plugin_defaults
from audit.training import build_setup, distribute, model_spec_for, seed_everything

csv, out = sys.argv[1], sys.argv[2]
given = {"data": csv, "target": "defaulted", "sensitive": ["sex"], "hidden": [256, 64], "epochs": 1,
         "batch_size": 64, "seed": 3, "quiet": True}
options = {"dp": True, "noise_multiplier": 2.0, "max_grad_norm": 0.5, "fairness": "reweight",
           "reweight_epsilon": 0.5}
pm = get_plugin_manager()
plugin_options = {o.dest: o for group in pm.hook.audit_cli_options() for o in group or [] if "train" in o.commands}
values = {dest: o.kwargs.get("default") for dest, o in plugin_options.items()}
config = build_config({**values, **options, **given, "command": "train"}, plugin_options)
pm.hook.audit_configure(config=config)
generator = seed_everything(config.seed)
dataset = load_dataset(config)
config.resolve(train_rows=len(dataset.train), plugin_defaults=plugin_defaults(config, pm))
with process_group(torch.device("cpu")) as world:
    setup = build_setup(config, dataset, world.device, generator, model_spec_for(config, dataset))
    setup.world = world
    pm.hook.audit_prepare_training(setup=setup)
    distribute(setup)
    # every per-sample gradient is zero: what reaches .grad is the noise over the expected global batch alone
    setup.criterion = lambda logits, y: logits.sum(1) * 0.0
    step = TrainingStep(setup)
    grads = []
    for _ in range(4):
        step(setup.batch_sampler.sample(setup.generator))
        grads.append(torch.cat([p.grad.reshape(-1) for p in setup.base_model.parameters()]))
    grads = torch.stack(grads)
    gathered = [torch.zeros_like(grads) for _ in range(world.world_size)]
    dist.all_gather(gathered, grads)
    weights = [torch.zeros_like(setup.sample_weights) for _ in range(world.world_size)]
    dist.all_gather(weights, setup.sample_weights)
    if world.is_main:
        json.dump({
            "std": float(grads.std()), "mean": float(grads.mean()), "numel": grads.numel(),
            "grads_identical": all(torch.equal(g, grads) for g in gathered),
            "weights_identical": all(torch.equal(w, setup.sample_weights) for w in weights),
            "weights_spread": float(setup.sample_weights.max() - setup.sample_weights.min()),
            "world_size": world.world_size,
        }, open(out, "w"))
"""


def test_dp_noise_is_added_once_for_the_global_batch_and_reweighing_is_global(loans, tmp_path):
    """Under torchrun: the noise std of a step is sigma*C/(expected global batch), identical on every rank
    (not sqrt(2) larger: added once); reweighing weights (with noisy counts) are identical on every rank."""
    script, out = tmp_path / "worker.py", tmp_path / "out.json"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*command, str(script), str(loans), str(out)], capture_output=True, text=True, env=_env(), timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(out.read_text())
    assert found["world_size"] == 2 and found["grads_identical"] and found["weights_identical"]
    assert found["weights_spread"] > 0  # reweighing did change the weights
    expected = (
        2.0 * 0.5 / 64
    )  # sigma * C / expected batch; per-rank noise summed would give sqrt(2) times this
    # ~80k draws: the sample std is within 1% of the true one (its relative error is ~1/sqrt(2n) = 0.25%)
    assert found["numel"] > 50_000
    assert found["std"] == pytest.approx(expected, rel=0.02)
    assert abs(found["mean"]) < 0.05 * expected


FACTORY = '''
import os
from torch import nn

class DiesOnRankOne(nn.Sequential):
    """An MLP whose third training forward pass on rank 1 ends the process (a worker lost mid-training)."""
    calls = 0

    def forward(self, x):
        if self.training and os.environ.get("RANK") == "1":
            type(self).calls += 1
            if type(self).calls == 3:
                os._exit(7)
        return super().forward(x)

def build(input_shape, num_classes):
    return DiesOnRankOne(nn.Linear(input_shape[0], 8), nn.ReLU(), nn.Linear(8, num_classes))
'''


def test_a_rank_that_dies_fails_the_run_with_one_line_and_no_files(loans, tmp_path):
    (tmp_path / "dying.py").write_text(FACTORY)
    out = tmp_path / "out"
    done = _train(loans, out, "--model", "dying:build", plugins="", PYTHONPATH=str(tmp_path))
    assert done.returncode == 3
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0] == (
        "audit: error: distributed training failed: rank 1 stopped (exit code 7); no report was written"
    )
    assert not out.exists() or not any(out.iterdir())


def test_bad_input_on_two_processes_is_one_line_and_exit_2(loans, tmp_path):
    done = _train(loans, tmp_path / "out", "--dp", plugins="privacy")  # no --epsilon nor --noise-multiplier
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and "--dp needs exactly one of" in lines[0]
    assert not (tmp_path / "out").exists()


def test_nproc_per_node_is_checked_and_stripped(cli):
    assert cli("train", "--nproc-per-node", "0", "--data", "adult").code == 2
    argv = ["train", "--nproc-per-node", "2", "--epochs", "1", "--nproc-per-node=2"]
    assert without_flag(argv, "--nproc-per-node") == ["train", "--epochs", "1"]
