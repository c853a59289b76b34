"""COCO caption metrics (mmdemo.eval.captions) against values worked out by hand, and bootstrap intervals."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_or_skip

from mmdemo.eval.bleu import corpus_bleu_scores, scores_from_statistics, segment_statistics
from mmdemo.eval.bootstrap import bootstrap_interval, compare, mean_interval, overlap, with_interval
from mmdemo.eval.captions import CiderResampler, caption_metrics, meteor_scores, parse_metrics

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def java():
    # METEOR and COCO's tokenizer are Java programs; CI installs a JRE, so there a missing one fails.
    if shutil.which("java") is None:
        require_or_skip("no java on PATH (apt-get install default-jre-headless)")


def test_rouge_l_by_hand(java):
    # hyp "a dog runs on grass" (5 tokens). ref 1 "a dog is running on the grass" (7): LCS "a dog on grass"
    # = 4, so P = 4/5, R = 4/7. ref 2 "a dog runs" (3): LCS 3, P = 3/5, R = 3/3. pycocoevalcap takes the
    # best precision and the best recall separately: P = 0.8, R = 1.0, and
    # F = (1 + 1.2^2) P R / (R + 1.2^2 P) = 2.44 * 0.8 / (1 + 1.152) = 0.90706...
    scores = caption_metrics(
        ["A dog runs on grass ."],
        [["a dog is running on the grass", "A dog runs."]],
        ["rouge_l"],
        resamples=0,
    )
    assert scores["rouge_l"] == pytest.approx(100 * 2.44 * 0.8 / (1 + 1.44 * 0.8), abs=1e-3)
    # One reference only: F from P = 4/5, R = 4/7.
    p, r = 4 / 5, 4 / 7
    one = caption_metrics(
        ["a dog runs on grass"], [["a dog is running on the grass"]], ["rouge_l"], resamples=0
    )
    assert one["rouge_l"] == pytest.approx(100 * 2.44 * p * r / (r + 1.44 * p), abs=1e-3)


def test_cider_d_by_hand(java):
    # Two images, one reference each, no n-gram in common between the two references, so every n-gram of
    # image 1's reference has document frequency 1 and weight log(2 images) - log(1) = log 2.
    refs = [["A red circle on the left ."], ["two blue squares"]]
    # Image 1's hypothesis is its reference (after COCO tokenisation): every order's cosine is 1 and the
    # lengths agree, so its CIDEr-D is 10 (pycocoevalcap's scale); image 2's shares nothing: 0.
    same = caption_metrics(["a red circle on the left", "green triangle"], refs, ["cider"], resamples=0)
    assert same["cider"] == pytest.approx(100 * (10 + 0) / 2, abs=1e-6)
    # One extra word: each order k gains one n-gram the references lack (df 0 -> weight log 2 as well),
    # so cosine_k = sqrt(m_k / (m_k + 1)) with m = 6, 5, 4, 3 shared n-grams, and the length difference of
    # one token costs exp(-1 / (2 * 6^2)).
    longer = caption_metrics(
        ["a red circle on the left side", "green triangle"], refs, ["cider"], resamples=0
    )
    cosines = [math.sqrt(m / (m + 1)) for m in (6, 5, 4, 3)]
    by_hand = 10 * math.exp(-1 / 72) * sum(cosines) / 4
    assert longer["cider"] == pytest.approx(100 * by_hand / 2, abs=1e-6)


@pytest.mark.slow  # one Java start of METEOR with its paraphrase table: 10-30 s
def test_meteor_sanity(java):
    ref = ["a brown dog runs across the green grass"]
    hyps = [
        "a brown dog runs across the green grass",  # identical
        "the green grass runs across a brown dog",  # same words, scrambled: more chunks
        "a brown puppy runs across the green lawn",  # two words changed
        "two children eat ice cream",  # unrelated
    ]
    corpus, per, interval = meteor_scores(hyps, [ref] * len(hyps), resamples=100)
    assert per[0] > 0.95, per
    assert per[3] < 0.1, per
    assert per[3] < per[2] < per[0] and per[3] < per[1] < per[0], per
    assert min(per) < corpus < max(per)
    # Corpus-level resamples through METEOR's own pooling: the interval surrounds the corpus score ...
    assert interval.low <= corpus <= interval.high and interval.high - interval.low > 0.1, interval


def test_cider_resampler_equals_pycocoevalcap_on_resamples():
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    rng = np.random.default_rng(3)
    words = "a dog cat man runs jumps on the in grass water red blue shirt ball".split()

    def sentence() -> str:
        return " ".join(rng.choice(words, size=rng.integers(2, 12)))

    refs = [[sentence() for _ in range(rng.integers(1, 6))] for _ in range(60)]
    hyps = [sentence() for _ in range(60)]
    hyps[0] = refs[0][0]
    resampler = CiderResampler(hyps, refs)
    for indices in (np.arange(60), rng.integers(0, 60, 60), rng.integers(0, 60, 60)):
        scorer = CiderScorer(n=4, sigma=6.0)
        for i in indices:
            scorer += (hyps[i], refs[i])
        assert resampler.score(indices) == pytest.approx(scorer.compute_score()[0], abs=1e-9)


def test_bleu_of_summed_segment_statistics_is_corpus_bleu_of_the_resample():
    hyps = ["a dog runs on the grass", "two dogs play", "", "a cat sleeps on a sofa"]
    refs = [["a dog runs on the green grass"], ["two dogs play in the snow", "dogs"], ["a girl"], ["a cat"]]
    stats = segment_statistics(hyps, refs)
    for indices in ([0, 0, 1, 3], [2, 2, 2, 1], [3, 1, 0, 2]):
        summed = (
            sum(stats[i][0] for i in indices),
            sum(stats[i][1] for i in indices),
            [sum(stats[i][2][k] for i in indices) for k in range(4)],
            [sum(stats[i][3][k] for i in indices) for k in range(4)],
        )
        direct = corpus_bleu_scores([hyps[i] for i in indices], [refs[i] for i in indices])
        assert scores_from_statistics(summed) == {k: direct[k] for k in ("bleu1", "bleu2", "bleu3", "bleu4")}


def test_bleu_intervals_surround_the_score_and_are_reproducible():
    rng = np.random.default_rng(0)
    words = "a dog cat runs on the grass red ball".split()
    refs = [[" ".join(rng.choice(words, 8)) for _ in range(3)] for _ in range(40)]
    hyps = [" ".join(rng.choice(words, 7)) for _ in range(40)]
    a = caption_metrics(hyps, refs, ["bleu"], resamples=200, seed=1)
    b = caption_metrics(hyps, refs, ["bleu"], resamples=200, seed=1)
    assert a == b
    for k in ("bleu1", "bleu2", "bleu3", "bleu4"):
        low, high = a["intervals"][k]
        assert low < a[k] < high, (k, a[k], low, high)
    assert set(a) == {"bleu1", "bleu2", "bleu3", "bleu4", "n", "intervals", "bootstrap"}


def test_mean_interval_shrinks_with_more_items_and_overlap_logic():
    rng = np.random.default_rng(0)
    small = mean_interval(rng.integers(0, 2, 20), resamples=500)
    large = mean_interval(rng.integers(0, 2, 2000), resamples=500)
    assert (large.high - large.low) < (small.high - small.low) / 4  # width ~ 1/sqrt(n): 10x fewer
    assert mean_interval([1.0]) is None
    same = mean_interval([0.5] * 10)
    assert (same.low, same.high) == (0.5, 0.5)
    assert overlap([0, 1], [1, 2]) and not overlap([0, 1], [1.01, 2]) and overlap(same, [0.4, 0.6])
    assert "do not overlap" in compare("a", 0.9, [0.85, 0.95], "b", 0.5, [0.4, 0.6])
    assert "intervals overlap" in compare("a", 0.9, [0.5, 0.95], "b", 0.5, [0.4, 0.6])
    assert with_interval(69.6, [67.1, 72.0]) == "69.60 [67.10, 72.00]"
    # An interval at corpus level: the statistic sees the resampled indices, not a mean of per-item scores.
    seen = []
    bootstrap_interval(lambda idx: seen.append(len(idx)) or 0.0, 7, resamples=5)
    assert set(seen) == {7}


def test_metric_names_and_spice():
    assert parse_metrics("bleu, CIDEr") == ["bleu", "cider"]
    with pytest.raises(ValueError, match="SPICE is not offered.*CoreNLP"):
        parse_metrics("bleu,spice")
    with pytest.raises(ValueError, match="unknown metric 'cidr'"):
        parse_metrics("cidr")


def test_cli_prints_metrics_with_intervals(java, tmp_path):
    refs = tmp_path / "captions.txt"
    refs.write_text(
        "image,caption\n"
        + "".join(f"img{i}.jpg,a {c} circle on the {p} .\n" for i, (c, p) in enumerate(
            [("red", "left"), ("blue", "right"), ("green", "top"), ("red", "bottom")]) for _ in range(2))
        + "img0.jpg,one red circle at left .\nimg1.jpg,blue circle right side .\n",
        encoding="utf-8",
    )  # fmt: skip
    hyps = tmp_path / "hyps.csv"
    hyps.write_text(
        "img0.jpg,a red circle on the left .\nimg1.jpg,a blue circle\non the right .\n"
        "img2.jpg,a green square\nimg3.jpg,a red circle on the bottom .\n",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "mmdemo.eval.captions", "--hyps", str(hyps), "--refs", str(refs),
         "--resamples", "50", "--metrics", "bleu,rouge_l,cider"], capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("bleu1", "bleu4", "rouge_l", "cider"):  # METEOR: see test_meteor_sanity (slow to start)
        assert 0 <= out[key] <= 1000 and len(out["intervals"][key]) == 2, key
    assert out["n"] == 4
    assert "line 3: does not start with an image name" in proc.stderr  # the unquoted line break
    proc = subprocess.run(
        [sys.executable, "-m", "mmdemo.eval.captions", "--hyps", str(hyps), "--refs", str(refs),
         "--metrics", "spice"], capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "SPICE is not offered" in proc.stderr and proc.stdout == ""
