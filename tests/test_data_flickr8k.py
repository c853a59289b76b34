"""Flickr8k loading, CSV edge cases and the report's splits."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from mmdemo.data.flickr8k import (
    LORA_TRAIN_IMAGES,
    CaptionCorpus,
    ImageCaption,
    captioning_split,
    captioning_val_references,
    load_flickr8k,
    read_captions_txt,
    text_to_image_split,
    text_to_image_train_size,
    write_captions_txt,
)

# Written byte for byte: quoting as the Kaggle file does it, plus the harder cases.
TRICKY_CAPTIONS = (
    "image,caption\n"
    "b.jpg,A dog runs .\n"
    'b.jpg,"A dog shakes its head near the shore , a red ball next to it ."\n'
    "a.jpg,  A man rides a bike .  \n"
    "\n"
    'b.jpg,"A sign reads ""STOP"" ."\n'
    'a.jpg,"A caption that goes\non over two lines"\n'
    "c.jpg,Only one caption here\n"
)


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


def make_corpus(n_images: int) -> CaptionCorpus:
    images = [f"img{i:05d}.jpg" for i in range(n_images)]
    return CaptionCorpus(None, images, {name: [f"first {name}", f"second {name}"] for name in images})


def test_read_captions_handles_quotes_commas_newlines_and_order(tmp_path: Path) -> None:
    images, captions = read_captions_txt(write_text(tmp_path / "captions.txt", TRICKY_CAPTIONS))
    assert images == ["b.jpg", "a.jpg", "c.jpg"]  # first appearance, not sorted
    assert captions["b.jpg"] == [
        "A dog runs .",
        "A dog shakes its head near the shore , a red ball next to it .",
        'A sign reads "STOP" .',
    ]
    assert captions["a.jpg"] == ["A man rides a bike .", "A caption that goes\non over two lines"]
    assert captions["c.jpg"] == ["Only one caption here"]


def test_load_folder_and_file(tmp_path: Path) -> None:
    write_text(tmp_path / "captions.txt", TRICKY_CAPTIONS)
    (tmp_path / "Images").mkdir()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(tmp_path / "Images" / "b.jpg")

    from_folder = load_flickr8k(tmp_path)
    assert from_folder.root == tmp_path and from_folder.images == ["b.jpg", "a.jpg", "c.jpg"]
    assert from_folder.image_path("a.jpg") == tmp_path / "Images" / "a.jpg"
    assert from_folder.has_images()
    assert from_folder.open_image("b.jpg").size == (8, 6)
    with pytest.raises(FileNotFoundError, match="Kaggle layout"):
        from_folder.open_image("a.jpg")

    from_file = load_flickr8k(str(tmp_path / "captions.txt"))
    assert from_file.root is None and not from_file.has_images()
    assert from_file.captions == from_folder.captions
    with pytest.raises(ValueError, match="no image folder"):
        from_file.image_path("a.jpg")


def test_folder_without_images_has_no_images(tmp_path: Path) -> None:
    write_text(tmp_path / "captions.txt", TRICKY_CAPTIONS)
    assert not load_flickr8k(tmp_path).has_images()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,text\na.jpg,hello\n", "missing image, caption"),
        ("image\na.jpg\n", "missing caption"),
        ("", "missing image, caption"),
        ("image,caption\na.jpg,A dog , unquoted comma\n", "line 2: 3 fields"),
        ("image,caption\na.jpg,\n", "line 2: row without"),
    ],
)
def test_malformed_files_raise_with_the_file_name(tmp_path: Path, text: str, message: str) -> None:
    path = write_text(tmp_path / "broken_captions.txt", text)
    with pytest.raises(ValueError, match=message) as info:
        load_flickr8k(path)
    assert "broken_captions.txt" in str(info.value)


def test_missing_sources_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="captions.txt"):
        load_flickr8k(tmp_path)  # a folder without captions.txt
    with pytest.raises(FileNotFoundError, match="neither"):
        load_flickr8k(tmp_path / "no" / "such" / "dir")


def test_write_captions_round_trips(tmp_path: Path) -> None:
    rows = [
        ("x.png", "plain caption"),
        ("x.png", "with , comma"),
        ("y.png", 'with "quotes" inside'),
        ("y.png", "with\nnewline"),
    ]
    path = tmp_path / "sub" / "captions.txt"
    assert write_captions_txt(path, rows) == 4
    images, captions = read_captions_txt(path)
    assert images == ["x.png", "y.png"]
    assert [(name, c) for name in images for c in captions[name]] == rows
    assert path.read_text(encoding="utf-8").startswith("image,caption\n")


def test_hub_without_datasets_package_explains_the_local_alternative(fake_module) -> None:
    fake_module("datasets", missing=True)
    with pytest.raises(RuntimeError, match="Kaggle layout"):
        load_flickr8k("someone/flickr8k-does-not-exist")


class FakeTable:
    """The slice of the `datasets.Dataset` interface the loader uses."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows
        self.column_names = list(rows[0])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | str):
        if isinstance(key, str):
            return [row[key] for row in self.rows]
        return self.rows[key]


@pytest.mark.parametrize(
    "layout",
    [
        lambda caps: {f"caption_{i}": c for i, c in enumerate(caps)},
        lambda caps: {"captions": caps},
        lambda caps: {"text": caps[0]},
    ],
)
def test_hub_column_layouts(fake_module, layout) -> None:
    pictures = [Image.new("RGB", (4, 4), (i * 50, 0, 0)) for i in range(3)]
    rows = [{"image": pictures[i], **layout([f" cap {i}.{j} " for j in range(5)])} for i in range(3)]
    fake_module("datasets", load_dataset=lambda dataset_id, split=None: {"train": FakeTable(rows)})

    corpus = load_flickr8k("someone/flickr8k")
    assert corpus.root is None and corpus.has_images()
    assert corpus.images == ["train/000000", "train/000001", "train/000002"]
    expected = 1 if "text" in rows[0] else 5
    assert corpus.captions["train/000001"] == [f"cap 1.{j}" for j in range(expected)]
    assert corpus.open_image("train/000002").getpixel((0, 0)) == (100, 0, 0)


def test_captioning_split_rule() -> None:
    corpus = make_corpus(11)
    train, val = captioning_split(corpus)
    assert len(train) == 8 and len(val) == 3  # int(0.8 * 11) = 8
    assert train[0] == ImageCaption("img00000.jpg", "first img00000.jpg")
    assert [pair.image for pair in train + val] == corpus.images
    references = captioning_val_references(corpus)
    assert list(references) == [pair.image for pair in val]
    assert references["img00010.jpg"] == ["first img00010.jpg", "second img00010.jpg"]


@pytest.mark.parametrize(
    ("n_images", "n_train"),
    [(8091, 7000), (7001, 7000), (7000, 5600), (2000, 1600), (5, 4)],
)
def test_text_to_image_train_size(n_images: int, n_train: int) -> None:
    assert text_to_image_train_size(n_images) == n_train
    train, prompts = text_to_image_split(make_corpus(n_images))
    assert len(train) == n_train and len(prompts) == n_images - n_train


def test_empty_corpus_cannot_be_split() -> None:
    with pytest.raises(ValueError, match="empty"):
        captioning_split(make_corpus(0))


def read_split_csv(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["image", "caption"]
        return [(row[0], row[1]) for row in reader]


def test_report_captioning_split_is_reproduced(flickr8k_shared: Path) -> None:
    corpus = load_flickr8k(flickr8k_shared)
    assert len(corpus) == 8091 and all(len(c) == 5 for c in corpus.captions.values())
    train, val = captioning_split(corpus)
    report_train = read_split_csv(flickr8k_shared / "report_train_split.csv")
    report_val = read_split_csv(flickr8k_shared / "report_val_split.csv")
    assert (len(train), len(val)) == (len(report_train), len(report_val)) == (6472, 1619)
    assert [tuple(pair) for pair in train] == report_train
    assert [tuple(pair) for pair in val] == report_val
    references = captioning_val_references(corpus)
    assert len(references) == 1619 and all(len(refs) == 5 for refs in references.values())
    assert all(references[image][0] == caption for image, caption in report_val)


def test_report_text_to_image_split(flickr8k_shared: Path) -> None:
    corpus = load_flickr8k(flickr8k_shared)
    train, prompts = text_to_image_split(corpus)
    assert LORA_TRAIN_IMAGES == 7000
    assert (len(train), len(prompts)) == (7000, 1091)
    assert [pair.image for pair in train] == corpus.images[:7000]
    assert all(pair.caption == corpus.captions[pair.image][0] for pair in train)
    assert prompts == [corpus.captions[name][0] for name in corpus.images[7000:]]
    assert prompts[0] == corpus.captions[corpus.images[7000]][0]
