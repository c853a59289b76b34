"""The Shapes dataset: determinism, coverage, captions, pixels and the Flickr8k-layout CLI."""

from __future__ import annotations

import itertools
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmdemo.data import shapes
from mmdemo.data.flickr8k import load_flickr8k, read_captions_txt

REPO_ROOT = Path(__file__).resolve().parents[1]
VOCABULARY_WORDS = (
    set(shapes.COLOR_WORDS)
    | set(shapes.SHAPE_WORDS)
    | set(shapes.SIZE_WORDS)
    | set(shapes.POSITION_WORDS)
    | {word for spec in shapes.BACKGROUNDS.values() for word in spec.phrase.split()}
)


def sample_scenes(n: int, seed: int, **kwargs) -> list[shapes.ShapesScene]:
    rng = random.Random(seed)
    return [shapes.sample_scene(rng, **kwargs) for _ in range(n)]


def skeleton(caption: str) -> tuple[str, ...]:
    """The caption's word sequence with every vocabulary word replaced by a placeholder."""
    return tuple("_" if word in VOCABULARY_WORDS else word for word in caption.split())


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    first = shapes.generate_shapes_dataset(tmp_path / "a", n=12, seed=7, size=32)
    again = shapes.generate_shapes_dataset(tmp_path / "b", n=12, seed=7, size=32)
    other = shapes.generate_shapes_dataset(tmp_path / "c", n=12, seed=8, size=32)
    assert folder_bytes(first) == folder_bytes(again)
    assert len(list((first / "Images").glob("*.png"))) == 12

    _, captions_first = read_captions_txt(first / "captions.txt")
    _, captions_other = read_captions_txt(other / "captions.txt")
    assert captions_first != captions_other
    different_pixels = [
        not np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(other / "Images" / p.name)))
        for p in sorted((first / "Images").glob("*.png"))
    ]
    assert sum(different_pixels) >= 10


def test_a_shorter_run_is_a_prefix_of_a_longer_one(tmp_path: Path) -> None:
    short = shapes.generate_shapes_dataset(tmp_path / "short", n=3, seed=1, size=32)
    long = shapes.generate_shapes_dataset(tmp_path / "long", n=6, seed=1, size=32)
    assert (short / "Images" / "shapes_000002.png").read_bytes() == (
        long / "Images" / "shapes_000002.png"
    ).read_bytes()
    assert (
        load_flickr8k(long).captions["shapes_000002.png"]
        == load_flickr8k(short).captions["shapes_000002.png"]
    )


def test_vocabulary_coverage() -> None:
    scenes = sample_scenes(300, seed=0, image_size=64)
    objects = [o for s in scenes for o in s.objects]
    assert {o.color for o in objects} == set(shapes.COLORS)
    assert {o.shape for o in objects} == set(shapes.SHAPES)
    assert {o.size for o in objects} == set(shapes.SIZES)
    assert {o.position for o in objects} == set(shapes.POSITIONS)
    assert {len(s.objects) for s in scenes} == {1, 2}
    assert {s.background for s in scenes} == {k for k, v in shapes.BACKGROUNDS.items() if v.style == "plain"}
    assert len(shapes.COLORS) >= 6 and len(shapes.SHAPES) >= 3 and len(shapes.POSITIONS) == 5


def test_two_objects_are_apart_and_distinguishable() -> None:
    pairs = [s for s in sample_scenes(150, seed=3, image_size=32) if len(s.objects) == 2]
    assert len(pairs) > 40
    for scene in pairs:
        a, b = scene.objects
        assert a.position != b.position and (a.color, a.shape) != (b.color, b.shape)
        masks = [shapes.render_object_mask(o, scene.image_size) for o in scene.objects]
        assert not np.any((masks[0] > 0) & (masks[1] > 0))


def test_objects_stay_at_their_anchor_and_inside_the_image() -> None:
    for scene in sample_scenes(200, seed=4, image_size=64):
        for obj in scene.objects:
            x, y = obj.center_xy[0] / 64, obj.center_xy[1] / 64
            nearest = min(
                shapes.POSITIONS,
                key=lambda p: (shapes.POSITIONS[p][0] - x) ** 2 + (shapes.POSITIONS[p][1] - y) ** 2,
            )
            assert nearest == obj.position
            reach = shapes.SHAPE_EXTENT[obj.shape] * obj.radius_px
            assert reach <= obj.center_xy[0] <= 64 - reach and reach <= obj.center_xy[1] <= 64 - reach


def test_backgrounds_never_look_like_an_object_colour() -> None:
    for spec in shapes.BACKGROUNDS.values():
        pixels = shapes.render_background(spec, 32, texture_seed=5).reshape(-1, 3)
        for name, rgb in shapes.COLORS.items():
            distance = np.linalg.norm(pixels - np.array(rgb, dtype=np.float32), axis=1).min()
            assert distance > 80, (spec.phrase, name, distance)


def test_styles_look_different() -> None:
    def background_stats(style: str) -> tuple[float, float]:
        scenes = sample_scenes(30, seed=2, image_size=32, style=style)
        images = [np.asarray(shapes.render_scene(s), dtype=np.float32) for s in scenes]
        # brightness, and mean difference between horizontal neighbours (texture)
        return float(np.mean(images)), float(np.mean([np.abs(np.diff(im, axis=1)).mean() for im in images]))

    plain, dark, textured = (background_stats(style) for style in shapes.STYLES)
    assert dark[0] < 100 < plain[0]
    assert textured[1] > 2 * plain[1]


@pytest.mark.parametrize("size", [32, 64])
def test_rendered_pixels_match_the_ground_truth(size: int) -> None:
    for scene in sample_scenes(40, seed=5, image_size=size):
        image = np.asarray(shapes.render_scene(scene))
        assert image.shape == (size, size, 3)
        for obj in scene.objects:
            x, y = (int(v) for v in obj.center_xy)
            assert tuple(image[y, x]) == shapes.COLORS[obj.color]
            covered = shapes.render_object_mask(obj, size) > 0.999
            exact = np.all(image == np.array(shapes.COLORS[obj.color]), axis=-1)
            assert covered.sum() >= 4 and np.all(exact[covered])
        free = set(shapes.POSITIONS) - {o.position for o in scene.objects}
        for position in free:  # an empty anchor shows background, no object colour
            fx, fy = (int(f * size) for f in shapes.POSITIONS[position])
            pixel = image[fy, fx].astype(float)
            assert min(np.linalg.norm(pixel - np.array(c)) for c in shapes.COLORS.values()) > 60


def test_render_at_another_size_scales_the_scene() -> None:
    scene = sample_scenes(1, seed=9, image_size=64, max_objects=1)[0]
    big = shapes.render_scene(scene, 128)
    obj = scene.resized(128).objects[0]
    assert big.size == (128, 128)
    assert big.getpixel((int(obj.center_xy[0]), int(obj.center_xy[1]))) == shapes.COLORS[obj.color]


def test_five_distinct_captions_with_different_structures() -> None:
    rng = random.Random(11)
    all_skeletons: set[tuple[str, ...]] = set()
    for scene in sample_scenes(120, seed=6, image_size=32):
        captions = shapes.scene_captions(scene, rng)
        assert len(captions) == 5 and len(set(captions)) == 5
        skeletons = [skeleton(c) for c in captions]
        for left, right in itertools.combinations(skeletons, 2):
            assert left != right, captions
        all_skeletons.update(skeletons)
        for caption in captions:
            assert caption == caption.strip().lower() and "  " not in caption
            assert not re.search(r"\ba [aeiou]", caption), caption  # "an orange", never "a orange"
            words = set(caption.split())
            for obj in scene.objects:
                assert obj.color in words, caption
                assert (
                    any(shapes.SHAPE_WORDS.get(w) == obj.shape for w in words)
                    or f"the {obj.color} one" in caption
                )
    assert len(all_skeletons) >= 14  # 9 single-object + 7 two-object structures, most of them seen


def test_single_object_captions_parse_back_to_the_ground_truth() -> None:
    rng = random.Random(12)
    for scene in sample_scenes(150, seed=7, image_size=64, max_objects=1):
        (obj,) = scene.objects
        truth = {"color": obj.color, "shape": obj.shape, "size": obj.size, "position": obj.position}
        for caption in shapes.scene_captions(scene, rng):
            assert shapes.parse_prompt(caption) == truth, caption


def test_two_object_captions_name_only_true_attributes() -> None:
    rng = random.Random(13)
    for scene in [s for s in sample_scenes(150, seed=8) if len(s.objects) == 2]:
        colors = {o.color for o in scene.objects}
        positions = {o.position for o in scene.objects}
        for caption in shapes.scene_captions(scene, rng):
            words = caption.split()
            assert {w for w in words if w in shapes.COLOR_WORDS} == colors
            # "to the left of" relates the two objects; every other position word is an object's own.
            own = caption.replace("to the left of", "").replace("to the right of", "").split()
            assert {shapes.POSITION_WORDS[w] for w in own if w in shapes.POSITION_WORDS} <= positions


def ngrams_up_to_2(text: str) -> list[tuple[str, ...]]:
    words = text.split()
    return [(w,) for w in words] + list(itertools.pairwise(words))


def test_a_wrong_colour_loses_ngrams() -> None:
    """A caption with its colour swapped matches fewer reference n-grams (n <= 2) than the true one."""
    rng = random.Random(14)
    for scene in sample_scenes(50, seed=10, max_objects=1):
        hypothesis, *references = shapes.scene_captions(scene, rng)
        color = scene.objects[0].color
        wrong = hypothesis.replace(color, next(c for c in shapes.COLORS if c != color))
        reference_ngrams = {g for ref in references for g in ngrams_up_to_2(ref)}
        matched_true = sum(g in reference_ngrams for g in ngrams_up_to_2(hypothesis))
        matched_wrong = sum(g in reference_ngrams for g in ngrams_up_to_2(wrong))
        assert matched_wrong < matched_true, hypothesis


def test_parse_prompt_synonyms_and_misses() -> None:
    assert shapes.parse_prompt("There is a TINY red ball near the left edge") == {
        "color": "red",
        "shape": "circle",
        "size": "small",
        "position": "left",
    }
    assert shapes.parse_prompt("a big purple rhombus in the lower part")["shape"] == "diamond"
    assert shapes.parse_prompt("a dog on a beach") == dict.fromkeys(("color", "shape", "size", "position"))


def test_single_object_prompts_for_generators() -> None:
    pairs = shapes.sample_single_object_prompts(40, seed=3)
    assert pairs == shapes.sample_single_object_prompts(40, seed=3)
    assert pairs != shapes.sample_single_object_prompts(40, seed=4)
    for prompt, scene in pairs:
        (obj,) = scene.objects
        parsed = shapes.parse_prompt(prompt)
        assert (parsed["color"], parsed["shape"], parsed["position"]) == (obj.color, obj.shape, obj.position)


def test_cli_writes_the_flickr8k_layout(tmp_path: Path) -> None:
    out = tmp_path / "shapes32"
    shapes.main(["--out", str(out), "--n", "6", "--seed", "3", "--size", "32", "--no-progress"])
    corpus = load_flickr8k(out)
    assert corpus.images == [f"shapes_{i:06d}.png" for i in range(6)]
    assert corpus.has_images() and all(len(corpus.captions[name]) == 5 for name in corpus.images)
    assert corpus.open_image("shapes_000005.png").size == (32, 32)
    scenes = shapes.load_scenes(out)
    assert list(scenes) == corpus.images
    for name, scene in scenes.items():
        assert scene.image_size == 32
        rendered = np.asarray(shapes.render_scene(scene))
        assert np.array_equal(rendered, np.asarray(Image.open(out / "Images" / name)))


def test_cli_runs_as_a_module(tmp_path: Path) -> None:
    out = tmp_path / "dark"
    result = subprocess.run(
        [sys.executable, "-m", "mmdemo.data.shapes", "--out", str(out), "--n", "2", "--seed", "0",
         "--max-objects", "1", "--style", "dark", "--no-progress"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    scenes = shapes.load_scenes(out)
    assert all(
        len(s.objects) == 1 and shapes.BACKGROUNDS[s.background].style == "dark" for s in scenes.values()
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n", "0"], "--n must be at least 1"),
        (["--n", "3", "--size", "8"], "--size must be at least 16"),
    ],
)
def test_bad_arguments_raise(tmp_path: Path, argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        shapes.main(["--out", str(tmp_path / "x"), *argv])


def test_refuses_to_overwrite_a_foreign_dataset(tmp_path: Path) -> None:
    (tmp_path / "captions.txt").write_text("image,caption\na.jpg,a real caption\n", encoding="utf-8")
    with pytest.raises(FileExistsError, match="not from a Shapes run"):
        shapes.generate_shapes_dataset(tmp_path, n=1, seed=0)
    assert "a real caption" in (tmp_path / "captions.txt").read_text(encoding="utf-8")


def test_scene_labels_name_each_position_and_the_background():
    from mmdemo.data.shapes import NO_OBJECT, POSITIONS, sample_scene, scene_labels

    scenes = [sample_scene(random.Random(seed), max_objects=2) for seed in range(20)]
    rows, classes = scene_labels(scenes)
    positions = list(POSITIONS)
    for scene, row in zip(scenes, rows):
        assert len(row) == 3 * len(positions) + 1 and classes["bg"][row[-1]] == scene.background
        by_position = {o.position: o for o in scene.objects}
        for i, position in enumerate(positions):
            obj = by_position.get(position)
            named = [classes[a][row[3 * i + j]] for j, a in enumerate(("color", "shape", "size"))]
            assert named == ([obj.color, obj.shape, obj.size] if obj else [NO_OBJECT] * 3)
