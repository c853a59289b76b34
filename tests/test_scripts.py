"""The commands the README documents outside the app: the parameter table and the benchmarks.

Each runs the way the README shows it, at its smallest setting; the checks are on what it prints (the README's
table rows, the ratio lines), never on how fast it was.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, load_script

from mmdemo.registry import REGISTRY

README = (REPO_ROOT / "README.md").read_text()


def _readme_param_rows() -> dict[str, tuple[str, str]]:
    """``| `model` | total | trainable | ...`` rows of the README's parameter table: id -> (total, trainable)."""
    rows = {}
    for model_id, total, trainable in re.findall(r"^\| `([\w.-]+)` \| ([\d,.]+M) \| ([\d,.]+M|0) \|", README, re.M):
        rows[model_id] = (total, "0.0M" if trainable == "0" else trainable)
    return rows


@pytest.mark.slow
@pytest.mark.bench
def test_params_table_prints_every_model_with_the_readme_numbers(capsys):
    from mmdemo import params

    assert params.main([]) == 0
    printed = {
        line.split()[0]: line.split()[1:3]
        for line in capsys.readouterr().out.splitlines()
        if line.split() and line.split()[0] in REGISTRY
    }
    assert set(printed) == set(REGISTRY), "python -m mmdemo.params prints one row per model"
    readme = _readme_param_rows()
    assert set(readme) == set(REGISTRY), "the README's parameter table lists every model"
    for model_id, (total, trainable) in readme.items():
        assert printed[model_id] == [total, trainable], (
            f"README parameter table out of date for {model_id}: README {total}/{trainable}, "
            f"python -m mmdemo.params prints {printed[model_id]}"
        )


def test_params_state_dict_prints_names_and_shapes(capsys):
    from mmdemo import params

    assert params.main(["--state-dict", "pixel-diffusion"]) == 0
    shapes = json.loads(capsys.readouterr().out)
    assert len(shapes) > 100
    assert all(isinstance(shape, list) and all(isinstance(n, int) for n in shape) for shape in shapes.values())
    # Its parameters (not buffers) add up to the table's total.
    row = params.param_row(REGISTRY["pixel-diffusion"])
    network = params.build_full_network(REGISTRY["pixel-diffusion"])
    names = {name for name, _ in network.named_parameters()}
    assert names <= set(shapes)
    assert sum(math.prod(shapes[name]) for name in names) == row.total


def test_params_module_runs_and_refuses_an_unknown_id():
    run = subprocess.run(
        [sys.executable, "-m", "mmdemo.params", "--state-dict", "resnet50"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert run.returncode == 2
    assert "unknown model id 'resnet50'" in run.stderr and "resnet18-xattn" in run.stderr


# ------------------------------------------------------------------------------------------------ benchmarks


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setenv("MMDEMO_NUM_THREADS", "1")


@pytest.mark.slow
@pytest.mark.bench
def test_captioner_decoding_bench_prints_its_ratios(capsys, one_thread):
    bench = load_script("captioner_decoding", folder="bench")
    bench.main(bench.parse_args(["--tokens", "2", "--batch", "2", "--repeats", "1"]))
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for ratio in ("kv_cache_speedup", "self_attention_cache_speedup", "batching_speedup"):
        assert _positive(result[ratio]), (ratio, result)
    assert result["kv_cache_same_tokens"] is True, "the cached and uncached decoders must agree token for token"


@pytest.mark.slow
@pytest.mark.bench
@pytest.mark.timeout(600)  # the report preset of the latent model is 1000 sampling steps
def test_diffusion_presets_bench_prints_its_ratios(capsys, one_thread):
    bench = load_script("diffusion_presets", folder="bench")
    bench.main(bench.parse_args(["--profile", "demo", "--n", "1", "--report-n-latent", "1", "--device", "cpu"]))
    out = capsys.readouterr().out
    ratios = dict(re.findall(r"^(pixel-diffusion|latent-diffusion)\s+[\d.]+\s+[\d.]+\s+([\d.]+)x", out, re.M))
    assert set(ratios) == {"pixel-diffusion", "latent-diffusion"}, out
    assert all(_positive(float(r)) for r in ratios.values()), ratios


@pytest.mark.slow
@pytest.mark.bench
def test_infinity_budget_bench_prints_tokens_memory_and_ratios(capsys, one_thread):
    bench = load_script("infinity_budget", folder="bench")
    bench.main(["--repeats", "1"])
    out = capsys.readouterr().out
    # Tokens and the 2B KV cache follow from the schedules alone: the README's numbers, exactly.
    for budget, tokens, gib in (("0.06M", 521, "0.25"), ("0.25M", 2521, "1.23"), ("1M", 10521, "5.14")):
        row = re.search(rf"^\s*{re.escape(budget)}\s+\d+x\d+\s+\d+\s+(\d+)\s+[\d.]+\s+([\d.]+) GiB\s+([\d.]+)", out, re.M)
        assert row is not None, (budget, out)
        assert (int(row[1]), row[2]) == (tokens, gib)
        assert _positive(float(row[3]))
    speedups = re.findall(r"speed-up x([\d.]+)", out)
    assert len(speedups) == 2 and all(_positive(float(x)) for x in speedups), out


@pytest.mark.bench
def test_arena_ratings_bench_recovers_known_strengths_and_times_the_database(capsys, monkeypatch):
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, os.environ.get(name, "1"))  # the script sets them; undo it after the test
    bench = load_script("arena_ratings", folder="bench")
    bench.main(["--votes", "4000", "--models", "4", "--rounds", "20", "--threads", "1", "--database"])
    out = capsys.readouterr().out
    for step in ("count votes", "maximum likelihood", "bootstrap", "whole leaderboard"):
        seconds = re.search(rf"^{step}\s+([\d.]+) s", out, re.M)
        assert seconds is not None and math.isfinite(float(seconds[1])), (step, out)
    # 4000 votes between 4 models of known strength: the fit lands within a few rating points of the truth.
    worst = float(re.search(r"worst \|fitted - true\| rating: ([\d.]+) points", out)[1])
    assert worst < 40, out
    stored = re.search(r"SQLite: storing (\d+) votes", out)
    assert stored is not None and int(stored[1]) == 4000, out


def test_bench_scripts_import_without_running(one_thread):
    """Every bench script is importable (no work at import) and documents itself."""
    for path in sorted((REPO_ROOT / "bench").glob("*.py")):
        module = load_script(path)
        assert module.__doc__ and hasattr(module, "main"), path.name


def test_scripts_need_no_path_edits():
    """train/ and bench/ import ``mmdemo`` as an installed package; no script edits ``sys.path``."""
    edit = re.compile(r"sys\.path\.(insert|append)\(|sys\.path \+?= ")
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for folder in ("train", "bench", "tests", "mmdemo")
        for path in (REPO_ROOT / folder).rglob("*.py")
        if edit.search(path.read_text())
    ]
    assert offenders == [], f"files that edit sys.path: {offenders}"
