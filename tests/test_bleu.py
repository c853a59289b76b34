"""Tests for mmdemo.eval.bleu: hand-computed scores, NLTK reference values, files and the CLI."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
from sacrebleu.metrics import BLEU

from mmdemo.eval.bleu import (
    corpus_bleu_scores,
    evaluate_files,
    load_hypotheses,
    load_references,
    sentence_bleu_scores,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-6  # on the 0-100 scale
REPORT_KEYS = ["bleu1", "bleu2", "bleu3", "bleu4"]
STANDARD_KEYS = ["standard_bleu1", "standard_bleu2", "standard_bleu3", "standard_bleu4"]

# A small fixed corpus. It covers a brevity penalty (0), a zero 4-gram count (1), clipping (2),
# a hypothesis shorter than 4 tokens (3), an empty hypothesis (4), punctuation and capitals with
# 5 references (5); the images have 2, 2, 2, 3, 1 and 5 references.
HYPS = [
    "a dog runs on the grass",
    "the boy jumps into blue water",
    "a cat sleeps on a sofa",
    "two dogs play",
    "",
    "A man , in a red shirt , climbs a rock wall .",
]
REFS = [
    ["a dog runs on the green grass", "the dog is running on grass in the park"],
    ["a boy jumps into the water", "the child jumps into a pool"],
    ["a cat sleeps on the sofa", "a grey cat is sleeping"],
    ["two dogs play in the snow", "dogs playing", "two brown dogs play together outside"],
    ["a girl smiles"],
    [
        "A man in a red shirt climbs a rock wall .",
        "a man climbing a rock",
        "A climber in red scales a wall .",
        "Man , red shirt , rock climbing",
        "A person climbs up a steep rock face .",
    ],
]

# Reference values from NLTK 3.10.4 (installed in a throwaway virtualenv, not a project
# dependency): 100 * nltk.translate.bleu_score.corpus_bleu([[r.split() for r in refs] ...],
# [h.split() ...], weights=w, smoothing_function=SmoothingFunction().method1) for
# w = (1,), (1/2, 1/2), (1/3, 1/3, 1/3), (1/4, 1/4, 1/4, 1/4).
NLTK_CORPUS = [88.77865616387997, 75.80920989827781, 66.20507863540954, 53.26698631786548]
# The same, one sentence at a time (NLTK's sentence_bleu is corpus_bleu of one sentence).
NLTK_SENTENCES = [
    [84.64817248906141, 75.71162714266755, 71.39503373537127, 67.31821382417486],
    [83.33333333333334, 57.73502691896258, 43.67902323681495, 22.95748846661433],
    [83.33333333333334, 70.71067811865476, 62.99605249474366, 53.7284965911771],
    [100.0, 100.0, 100.0, 56.23413251903491],
    [0.0, 0.0, 0.0, 0.0],
    [100.0, 86.60254037844388, 74.23464047399293, 59.18821883387649],
]


def _values(scores: dict, keys: list[str] = REPORT_KEYS) -> list[float]:
    return [scores[k] for k in keys]


def _assert_close(got: list[float], want: list[float], tol: float = TOL) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=tol), (got, want)


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------


def test_hand_computed_brevity_penalty():
    # hyp "a dog runs on the grass": c = 6 tokens; refs of 7 and 9 tokens -> closest r = 7,
    # BP = exp(1 - 7/6) = exp(-1/6) < 1.
    # Clipped matches / hypothesis n-grams:
    #   1-grams: a dog runs on the grass, all in ref 1                               -> 6/6
    #   2-grams: a dog, dog runs, runs on, on the match; "the grass" is in neither   -> 4/5
    #   3-grams: a dog runs, dog runs on, runs on the match; "on the grass" does not -> 3/4
    #   4-grams: a dog runs on, dog runs on the match; "runs on the grass" does not  -> 2/3
    # Cumulative uniform geometric means:
    #   BLEU-1 = BP * 1
    #   BLEU-2 = BP * (1 * 4/5) ** (1/2)
    #   BLEU-3 = BP * (1 * 4/5 * 3/4) ** (1/3) = BP * 0.6 ** (1/3)
    #   BLEU-4 = BP * (1 * 4/5 * 3/4 * 2/3) ** (1/4) = BP * 0.4 ** (1/4)
    bp = math.exp(-1 / 6)
    want = [100 * bp, 100 * bp * 0.8**0.5, 100 * bp * 0.6 ** (1 / 3), 100 * bp * 0.4**0.25]
    _assert_close(_values(sentence_bleu_scores(HYPS[0], REFS[0])), want)
    _assert_close(want, NLTK_SENTENCES[0])  # and the hand values are NLTK's


def test_hand_computed_zero_count_smoothed_with_epsilon():
    # hyp "the boy jumps into blue water": c = 6; refs of 6 and 6 tokens -> r = 6, BP = 1.
    #   1-grams: the (ref 2), boy, jumps, into, water (ref 1) match; blue does not  -> 5/6
    #   2-grams: boy jumps, jumps into match; the boy, into blue, blue water don't  -> 2/5
    #   3-grams: only "boy jumps into" matches                                     -> 1/4
    #   4-grams: none of the 3 matches                                             -> 0/3
    # method1 / floor: the zero count becomes 0.1, so p4 = 0.1/3.
    #   BLEU-4 = (5/6 * 2/5 * 1/4 * 0.1/3) ** (1/4)
    p = [5 / 6, 2 / 5, 1 / 4, 0.1 / 3]
    want = [100 * math.prod(p[:n]) ** (1 / n) for n in (1, 2, 3, 4)]
    _assert_close(_values(sentence_bleu_scores(HYPS[1], REFS[1])), want)
    _assert_close(want, NLTK_SENTENCES[1])


def test_hand_computed_corpus_sums_counts_and_clips():
    # Corpus of hyps 1 and 2: counts are summed over sentences before dividing (not averaged).
    # hyp 2 "a cat sleeps on a sofa": "a" appears twice but at most once in any one reference,
    # so it is clipped to 1 -> 1-grams 5/6; 2-grams a cat, cat sleeps, sleeps on -> 3/5;
    # 3-grams a cat sleeps, cat sleeps on -> 2/4; 4-grams a cat sleeps on -> 1/3.
    # With hyp 1 (5/6, 2/5, 1/4, 0/3): 10/12, 5/10, 3/8, 1/6 -- no zero left, so no smoothing.
    # Lengths: c = 6 + 6, r = 6 + 6 (hyp 2's closest reference has 6 tokens) -> BP = 1.
    p = [10 / 12, 5 / 10, 3 / 8, 1 / 6]
    want = [100 * math.prod(p[:n]) ** (1 / n) for n in (1, 2, 3, 4)]
    scores = corpus_bleu_scores(HYPS[1:3], REFS[1:3])
    _assert_close(_values(scores), want)
    assert scores["n"] == 2


def test_short_hypothesis_counts_once_per_order_like_nltk():
    # hyp "two dogs play" has no 4-gram. NLTK's modified_precision still uses a denominator of
    # max(1, 0) = 1 for that sentence, so p4 = (0 + 0.1) / 1. Closest reference: "dogs playing"
    # (2 tokens, |3 - 2| = 1) -> c > r, BP = 1; orders 1-3 match fully.
    want = [100.0, 100.0, 100.0, 100 * 0.1**0.25]
    _assert_close(_values(sentence_bleu_scores(HYPS[3], REFS[3])), want)
    _assert_close(want, NLTK_SENTENCES[3])
    # sacrebleu's corpus_score alone has no 4-gram total here and returns 0: the reason the module
    # applies NLTK's per-sentence floor to sacrebleu's segment statistics.
    plain = BLEU(tokenize="none", smooth_method="floor", smooth_value=0.1, max_ngram_order=4)
    assert plain.corpus_score([HYPS[3]], [[r] for r in REFS[3]]).score == 0.0


# ---------------------------------------------------------------------------
# Agreement with NLTK and with plain sacrebleu
# ---------------------------------------------------------------------------


def test_corpus_matches_nltk_reference_values():
    _assert_close(_values(corpus_bleu_scores(HYPS, REFS)), NLTK_CORPUS, tol=1e-9)


@pytest.mark.parametrize("i", range(len(HYPS)))
def test_sentences_match_nltk_reference_values(i):
    _assert_close(_values(sentence_bleu_scores(HYPS[i], REFS[i])), NLTK_SENTENCES[i], tol=1e-9)


def test_equals_plain_sacrebleu_when_every_hypothesis_has_four_tokens():
    # Hyps 0, 1, 2 and 5 have >= 4 tokens, so the NLTK floor never applies and the result must be
    # exactly sacrebleu's corpus_score with the documented settings.
    idx = [0, 1, 2, 5]
    hyps, refs = [HYPS[i] for i in idx], [REFS[i] for i in idx]
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(5)]
    want = [
        BLEU(tokenize="none", lowercase=False, smooth_method="floor", smooth_value=0.1, max_ngram_order=n)
        .corpus_score(hyps, streams)
        .score
        for n in (1, 2, 3, 4)
    ]
    _assert_close(_values(corpus_bleu_scores(hyps, refs)), want, tol=1e-9)


def test_bleu_n_is_cumulative_not_individual():
    scores = sentence_bleu_scores(HYPS[0], REFS[0])
    bp = math.exp(-1 / 6)
    # cumulative: orders 1-2 with weights 1/2 each
    assert scores["bleu2"] == pytest.approx(100 * bp * math.sqrt(1.0 * 0.8), abs=TOL)
    # not the individual 2-gram precision (weights (0, 1)), which would be BP * 4/5
    assert abs(scores["bleu2"] - 100 * bp * 0.8) > 1.0
    assert abs(scores["bleu3"] - 100 * bp * 0.75) > 1.0


# ---------------------------------------------------------------------------
# Tokenisation and case
# ---------------------------------------------------------------------------


def test_case_is_kept_by_default():
    refs = ["a dog runs on the grass"]
    assert sentence_bleu_scores("a dog runs on the grass", refs)["bleu4"] == pytest.approx(100.0)
    upper = sentence_bleu_scores("A dog runs on the grass", refs)
    assert upper["bleu1"] == pytest.approx(100 * 5 / 6, abs=TOL)
    assert corpus_bleu_scores(["A dog runs on the grass"], [refs], standard=True)["standard_bleu1"] < 99


def test_whitespace_is_the_only_separator():
    refs = ["a dog runs fast ."]
    # tabs, double spaces and newlines are whitespace like a space
    assert sentence_bleu_scores("a  dog\truns\nfast .", refs)["bleu4"] == pytest.approx(100.0)
    # punctuation glued to a word stays part of it ("fast." != "fast" "."), unlike 13a
    glued = corpus_bleu_scores(["a dog runs fast."], [refs], standard=True)
    assert glued["bleu1"] < 99
    assert glued["standard_bleu4"] == pytest.approx(100.0)


def test_standard_is_sacrebleu_default():
    scores = corpus_bleu_scores(HYPS, REFS, standard=True)
    streams = [[r[k] if k < len(r) else None for r in REFS] for k in range(5)]
    assert scores["standard_bleu4"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, streams).score, abs=1e-9)
    for n in (1, 2, 3):
        want = BLEU(max_ngram_order=n).corpus_score(HYPS, streams).score
        assert scores[f"standard_bleu{n}"] == pytest.approx(want, abs=1e-9)
    assert "tok:13a" in scores["standard_signature"]
    assert "smooth:exp" in scores["standard_signature"]
    assert set(corpus_bleu_scores(HYPS, REFS)) == {*REPORT_KEYS, "n"}


# ---------------------------------------------------------------------------
# Unequal numbers of references
# ---------------------------------------------------------------------------


def test_fewer_references_are_padded_with_none_not_empty_strings():
    # Image A has 2 references of 7 tokens, image B 5 references.
    hyps = ["a dog runs", "A man in a red shirt climbs a rock wall ."]
    refs = [["a dog runs across the green field", "a brown dog runs on the green grass"], REFS[5]]
    # A: c = 3, r = 7; B: c = 11, closest r = 11 -> corpus c = 14, r = 18, BP = exp(1 - 18/14).
    # 1-grams 3/3 + 11/11; 2-grams 2/2 + 10/10; 3-grams 1/1 + 9/9; 4-grams 0/1 + 8/8 (A's 3 tokens
    # still count once, NLTK-style) -> p = 1, 1, 1, 8/9.
    bp = math.exp(1 - 18 / 14)
    want = [100 * bp, 100 * bp, 100 * bp, 100 * bp * (8 / 9) ** 0.25]
    scores = corpus_bleu_scores(hyps, refs, standard=True)
    _assert_close(_values(scores), want)
    # None entries are ignored, so a caller that already padded with None gets the same score.
    padded_none = [refs[0] + [None, None, None], refs[1]]
    assert corpus_bleu_scores(hyps, padded_none, standard=True) == scores
    # An empty-string pad is a real, empty reference: for A (3 tokens) length 0 is closer than 7,
    # so r drops to 0 + 11 < c and the brevity penalty vanishes -- in both flavours.
    padded_empty = [refs[0] + ["", "", ""], refs[1]]
    wrong = corpus_bleu_scores(hyps, padded_empty, standard=True)
    assert wrong["bleu1"] == pytest.approx(100.0)
    assert wrong["bleu1"] - scores["bleu1"] > 10
    assert wrong["standard_bleu4"] - scores["standard_bleu4"] > 10


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------

TRICKY = 'A dog, called "Rex",\nruns on the grass .'  # comma, double quotes, embedded newline


def _corpus_files(tmp_path: Path) -> tuple[Path, Path]:
    refs = [("img1.jpg", TRICKY), ("img1.jpg", "a dog runs on the grass .")]
    refs += [("img2.jpg", r) for r in REFS[5]]
    refs += [("img3.jpg", "a cat sleeps on the sofa")]  # an image without a hypothesis is fine
    hyps = [("img2.jpg", HYPS[5]), ("img1.jpg", TRICKY)]
    return _write_csv(tmp_path / "good_hyps.csv", hyps), _write_csv(tmp_path / "captions.txt", refs)


def test_quoted_caption_round_trips_and_scores(tmp_path):
    hyps_path, refs_path = _corpus_files(tmp_path)
    assert load_hypotheses(hyps_path) == {"img2.jpg": HYPS[5], "img1.jpg": TRICKY}
    refs = load_references(refs_path)
    assert refs["img1.jpg"] == [TRICKY, "a dog runs on the grass ."]
    assert len(refs["img2.jpg"]) == 5
    scores = evaluate_files(hyps_path, refs_path)
    assert scores == corpus_bleu_scores([HYPS[5], TRICKY], [REFS[5], refs["img1.jpg"]])
    assert scores["n"] == 2


def test_hand_written_quoted_csv_parses(tmp_path):
    # The same caption as a person or another tool would quote it: doubled quotes inside quotes.
    path = tmp_path / "hyps.csv"
    path.write_text(
        'image,caption\nimg1.jpg,"A dog, called ""Rex"",\nruns on the grass ."\n', encoding="utf-8"
    )
    assert load_hypotheses(path) == {"img1.jpg": TRICKY}


def test_references_folder_and_empty_hypothesis(tmp_path):
    # --refs may name the Kaggle folder (DIR/captions.txt); an empty generated caption is scored
    # (as NLTK would: 0 tokens, 1 in each order's denominator), not rejected.
    good_hyps, _ = _corpus_files(tmp_path)
    hyps_path = _write_csv(tmp_path / "hyps.csv", [("img2.jpg", HYPS[5]), ("img1.jpg", "")])
    from_folder = evaluate_files(hyps_path, tmp_path)
    assert from_folder == evaluate_files(hyps_path, tmp_path / "captions.txt")
    assert from_folder["n"] == 2
    assert from_folder["bleu4"] < evaluate_files(good_hyps, tmp_path)["bleu4"]


def test_unknown_image_is_a_clear_error(tmp_path):
    hyps_path = _write_csv(tmp_path / "hyps.csv", [("img1.jpg", "a dog"), ("nope.jpg", "a cat")])
    _, refs_path = _corpus_files(tmp_path)
    with pytest.raises(ValueError, match=r"1 of 2 hypothesis image\(s\) have no references.*nope\.jpg"):
        evaluate_files(hyps_path, refs_path)


def test_repeated_image_keeps_its_last_caption_and_says_so(tmp_path):
    path = _write_csv(
        tmp_path / "hyps.csv", [("img1.jpg", "a dog"), ("img2.jpg", "x"), ("img1.jpg", "a cat")]
    )
    notices: list[str] = []
    assert load_hypotheses(path, notices=notices) == {"img1.jpg": "a cat", "img2.jpg": "x"}
    assert notices == [f"{path}, line 4: img1.jpg again (also on line 2); the last caption is kept"]


@pytest.mark.parametrize("text", ["", "image,caption\n", "image,caption\n\n", "\r\n\n"])
def test_empty_hypotheses_file_is_a_clear_error(tmp_path, text):
    path = tmp_path / "hyps.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match="empty|no hypotheses"):
        load_hypotheses(path)


# A published outputs file as it really comes: a byte-order mark, Windows line ends, no header, a caption
# broken over two lines without quotes (line 3 continues line 2), a blank line, an unquoted comma, and an
# image listed twice. Each number below is a physical line of the file.
PUBLISHED = (
    "\ufeffimg2.jpg,A man , in a red shirt ,\r\n"  # 1 (an unquoted comma too: kept in the caption)
    "img1.jpg,a dog runs\r\n"  # 2
    "on the grass .\r\n"  # 3: continues line 2
    "\r\n"  # 4: blank
    "img3.jpg,a cat\r\n"  # 5
    "img3.jpg,a cat sleeps on the sofa\r\n"  # 6: img3 again, this one wins
)


def test_published_outputs_file_is_read_and_every_repair_reported(tmp_path):
    path = tmp_path / "published.csv"
    path.write_bytes(PUBLISHED.encode("utf-8"))
    notices: list[str] = []
    hyps = load_hypotheses(path, notices=notices)
    assert hyps == {
        "img2.jpg": "A man , in a red shirt ,",
        "img1.jpg": "a dog runs on the grass .",
        "img3.jpg": "a cat sleeps on the sofa",
    }
    assert len(notices) == 4, notices
    assert "no 'image,caption' header" in notices[0]
    assert "line 1: unquoted comma" in notices[1]
    assert (
        "line 3: does not start with an image name; joined to the caption of img1.jpg (line 2)" in notices[2]
    )
    assert "line 6: img3.jpg again (also on line 5)" in notices[3]
    # The same file written the tidy way scores exactly the same.
    tidy = _write_csv(tmp_path / "tidy.csv", list(hyps.items()))
    refs = [("img1.jpg", r) for r in REFS[0]] + [("img2.jpg", r) for r in REFS[5]]
    refs += [("img3.jpg", r) for r in REFS[2]]
    refs_path = _write_csv(tmp_path / "captions.txt", refs)
    assert evaluate_files(path, refs_path) == evaluate_files(tidy, refs_path)
    assert evaluate_files(path, refs_path) == corpus_bleu_scores(
        ["A man , in a red shirt ,", "a dog runs on the grass .", "a cat sleeps on the sofa"],
        [REFS[5], REFS[0], REFS[2]],
    )


def test_continuation_uses_the_reference_images_to_tell_rows_apart(tmp_path):
    # Names without an image extension (ids) are rows only where the references know them.
    path = tmp_path / "hyps.csv"
    path.write_text("image,caption\n1001,a dog\nplays\n1002,a cat\n", encoding="utf-8")
    notices: list[str] = []
    assert load_hypotheses(path, known_images={"1001", "1002"}, notices=notices) == {
        "1001": "a dog plays",
        "1002": "a cat",
    }
    assert len(notices) == 1 and "line 3" in notices[0]
    with pytest.raises(ValueError, match="line 2: '1001' is not an image name, and no caption above it"):
        load_hypotheses(path)  # without the reference set, 1001 is not an image name


def test_ambiguous_files_are_clear_errors_naming_the_line(tmp_path):
    path = tmp_path / "hyps.csv"
    cases = {
        "a dog runs\nimg1.jpg,a dog\n": r"line 1: expected the header 'image,caption' or a row",
        "image,caption\nimg1.jpg,a dog\n,running\n": r"line 3: empty image name \(or a line break before",
        "image,caption\nimg1.jpg\n": r"line 2: image 'img1.jpg' without a caption",
        'image,caption\nimg1.jpg,a dog\nimg2.jpg,"a cat\nimg3.jpg,a bird\n': r"line 3: .*never closed",
        'image,caption\nimg1.jpg,"a" dog\n': r"line 2: .*quote a whole caption",
    }
    for text, message in cases.items():
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            load_hypotheses(path)


def test_headerless_file_and_unquoted_commas_are_read(tmp_path):
    path = tmp_path / "hyps.csv"
    path.write_text("img1.jpg,a dog\n", encoding="utf-8")
    assert load_hypotheses(path) == {"img1.jpg": "a dog"}
    path.write_text("image,caption\nimg1.jpg,a dog, running\n", encoding="utf-8")
    notices: list[str] = []
    assert load_hypotheses(path, notices=notices) == {"img1.jpg": "a dog, running"}
    assert "line 2: unquoted comma" in notices[0]


def test_api_input_errors():
    with pytest.raises(ValueError, match="no hypotheses"):
        corpus_bleu_scores([], [])
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference"):
        corpus_bleu_scores(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="no reference"):
        corpus_bleu_scores(["a"], [[None]])
    with pytest.raises(TypeError, match="not one string"):
        corpus_bleu_scores("a dog", [["a dog"]])


# ---------------------------------------------------------------------------
# Command line, end to end
# ---------------------------------------------------------------------------


def _cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmdemo.eval.bleu", *map(str, args)],
        cwd=REPO_ROOT,
        check=False,  # the exit status is what the tests look at
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_prints_json(tmp_path):
    hyps_path, refs_path = _corpus_files(tmp_path)
    proc = _cli("--hyps", hyps_path, "--refs", refs_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert list(out) == [*REPORT_KEYS, "n"]
    assert out == pytest.approx(evaluate_files(hyps_path, refs_path))
    assert all(0.0 <= out[k] <= 100.0 for k in REPORT_KEYS)

    proc = _cli("--hyps", hyps_path, "--refs", refs_path, "--standard")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {*REPORT_KEYS, "n", *STANDARD_KEYS, "standard_signature"}


def test_cli_reports_repairs_on_stderr_with_line_numbers(tmp_path):
    path = tmp_path / "published.csv"
    path.write_bytes(PUBLISHED.encode("utf-8"))
    refs = [("img1.jpg", r) for r in REFS[0]] + [("img2.jpg", r) for r in REFS[5]]
    refs += [("img3.jpg", r) for r in REFS[2]]
    refs_path = _write_csv(tmp_path / "captions.txt", refs)
    proc = _cli("--hyps", path, "--refs", refs_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == pytest.approx(evaluate_files(path, refs_path))
    notes = proc.stderr.strip().splitlines()
    assert len(notes) == 4 and all(n.startswith("python -m mmdemo.eval.bleu: note: ") for n in notes)
    assert "line 3: does not start with an image name" in notes[2]


def test_cli_errors_are_one_line_with_exit_status_2(tmp_path):
    hyps_path = _write_csv(tmp_path / "hyps.csv", [("ghost.jpg", "a dog")])
    _, refs_path = _corpus_files(tmp_path)
    for args in (
        ("--hyps", hyps_path, "--refs", refs_path),  # unknown image
        ("--hyps", tmp_path / "missing.csv", "--refs", refs_path),  # no such file
        ("--refs", refs_path),  # argparse: --hyps is required
    ):
        proc = _cli(*args)
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
    assert "ghost.jpg" in _cli("--hyps", hyps_path, "--refs", refs_path).stderr


# ---------------------------------------------------------------------------
# Real Flickr8k captions (skipped where the shared data is absent)
# ---------------------------------------------------------------------------


def test_flickr8k_val_split_matches_nltk(flickr8k_shared, tmp_path):
    # Hypothesis for each validation image: the first caption of the next validation image (an
    # unrelated but fluent caption), scored against all 5 references. NLTK 3.10.4 reference values
    # obtained as for NLTK_CORPUS, on the same hypotheses and references.
    refs = load_references(flickr8k_shared / "captions.txt")
    with open(flickr8k_shared / "report_val_split.csv", newline="", encoding="utf-8") as f:
        val = [row[0] for row in list(csv.reader(f))[1:]]
    hyps = [(img, refs[val[(i + 1) % len(val)]][0]) for i, img in enumerate(val)]
    hyps_path = _write_csv(tmp_path / "hyps.csv", hyps)
    scores = evaluate_files(hyps_path, flickr8k_shared / "captions.txt")
    assert scores["n"] == 1619
    nltk_values = [36.90318639926702, 14.047423500204001, 5.992901122530769, 2.9204443276340655]
    _assert_close(_values(scores), nltk_values, tol=1e-9)
