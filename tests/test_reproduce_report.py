"""train/reproduce_report.py: the full-size plan with estimates, and the whole chain end to end at tiny size."""

from __future__ import annotations

import json

import pytest
from conftest import load_script

from mmdemo.registry import REGISTRY

reproduce = load_script("reproduce_report")


@pytest.fixture
def captions_only(tmp_path):
    folder = tmp_path / "flickr8k"
    (folder / "Images").mkdir(parents=True)
    (folder / "captions.txt").write_text("image,caption\n" + "".join(f"{i}.jpg,a dog .\n" for i in range(10)))
    return folder


def test_dry_run_prints_every_stage_with_estimates_and_runs_nothing(captions_only, tmp_path, capsys):
    out = tmp_path / "report"
    result = reproduce.main(
        reproduce.parse_args(["--data", str(captions_only), "--out", str(out), "--dry-run"])
    )
    printed = capsys.readouterr().out
    assert not out.exists()  # nothing ran, nothing was written
    expected = [f"train-{m}" for m in reproduce.CAPTIONERS] + [f"eval-{m}" for m in reproduce.CAPTIONERS]
    expected += ["train-pixel-diffusion", "train-vqvae", "train-latent-diffusion", "train-sdxl-lora"]
    assert set(result["stages"]) == {*expected, "eval-text-to-image"}
    for stage in expected:
        assert f"# {stage} (~" in printed and "GPU-h, ~" in printed, stage
    # Training goes through accelerate's launcher at the report's recipe; the VQ-VAE comes before latent diffusion.
    assert printed.count("accelerate.commands.launch") >= 8 and printed.count("--recipe report") == 8
    assert result["stages"].index("train-vqvae") < result["stages"].index("train-latent-diffusion")
    assert "--preset report" in printed and "--n 1091" in printed and "--real-images" in printed
    assert result["gpu_hours"] > 10 and "# total: ~" in printed
    only = reproduce.main(reproduce.parse_args(["--data", str(captions_only), "--out", str(out), "--dry-run",
                                                "--models", "resnet18-xattn", "--only", "eval"]))  # fmt: skip
    assert only["stages"] == ["eval-resnet18-xattn"]
    with pytest.raises(ValueError, match="not one of our trained models"):
        reproduce.parse_args(["--data", str(captions_only), "--out", str(out), "--models", "sdxl-base"])


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 17 stages (seven trainings, their evaluations, both tables): minutes on 2 cores
def test_tiny_chain_end_to_end_then_everything_is_skipped(tmp_path, capsys):
    from mmdemo.data.shapes import generate_shapes_dataset

    data = generate_shapes_dataset(tmp_path / "shapes", n=24, seed=3, size=32)
    out = tmp_path / "report"
    tables = reproduce.main(reproduce.parse_args(["--tiny", "--data", str(data), "--out", str(out)]))
    rows = tables["table2"]["rows"]
    assert [r["model"] for r in rows] == list(reproduce.CAPTIONERS)
    for row in rows:
        assert (
            row["report"]["bleu4"] == REGISTRY[row["model"]].report.bleu[3]
        )  # the report's number beside ours
        assert 0 <= row["ours"]["bleu4"] <= 100 and row["n"] == 5  # Shapes' 24 images: 5 validate
        assert set(row["intervals"]) >= {"bleu4", "rouge_l", "cider"}
    markdown = (out / "table2.md").read_text()
    assert all(f"`{m}`" in markdown for m in reproduce.CAPTIONERS) and "[" in markdown
    t2i = tables["text_to_image"]["models"]
    assert set(t2i) == set(reproduce.ALL_GENERATORS) and all(
        s["n"] == 2 and "error" not in s for s in t2i.values()
    )
    assert (out / "eval" / "text-to-image" / "gallery.html").is_file() and (
        out / "text_to_image.md"
    ).is_file()
    # Our trained generators were the ones evaluated (served from OUT/checkpoints), not the shipped demos.
    linked = out / "checkpoints" / "demo" / "pixel-diffusion"
    assert linked.resolve() == (out / "train" / "pixel-diffusion").resolve()
    for stage in tables["table2"]["rows"]:
        assert json.loads((out / "stages" / f"train-{stage['model']}.json").read_text())["command"]
    capsys.readouterr()
    reproduce.main(reproduce.parse_args(["--tiny", "--data", str(data), "--out", str(out)]))
    printed = capsys.readouterr().out
    assert "[run]" not in printed and printed.count("[skip]") >= 16  # resumable: finished stages are skipped
