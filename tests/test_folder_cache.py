"""The decoded-image cache of data=folder survives parallel sweep jobs decoding at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torchvision.io import write_jpeg

from normlab.data import folder as folder_module

pytestmark = pytest.mark.fast  # in-process: make test-fast


def tiny_tree(root: Path) -> Path:
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            write_jpeg(
                torch.full((3, 8, 8), 40 * i, dtype=torch.uint8), str(root / label / f"{i}.jpg")
            )
    return root


def test_two_jobs_decoding_the_same_folder_at_once_both_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tiny_tree(tmp_path / "train")
    both_saved = threading.Barrier(2, timeout=30)
    real_save = torch.save

    def save_then_wait(obj: object, path: object) -> None:
        real_save(obj, path)
        both_saved.wait()  # both jobs hold a written temporary file before either renames it

    monkeypatch.setattr(folder_module.torch, "save", save_then_wait)
    with ThreadPoolExecutor(2) as pool:
        jobs = [
            pool.submit(folder_module.decode_folder_cached, tree, tmp_path / "cache")
            for _ in range(2)
        ]
        results = [job.result() for job in jobs]
    assert all(torch.equal(r[0], results[0][0]) for r in results)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [
        next((tmp_path / "cache").glob("folder-*.pt")).name
    ]


def decode(tree: Path, cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, _ = folder_module.decode_folder_cached(tree, cache)
    return images, labels


def test_an_image_replaced_inside_a_class_folder_is_decoded_again(tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path / "train")
    decode(tree, tmp_path / "cache")
    write_jpeg(torch.full((3, 8, 8), 250, dtype=torch.uint8), str(tree / "a" / "1.jpg"))
    images, _ = decode(tree, tmp_path / "cache")
    assert images[1].float().mean() > 200, "the cache served the old pixels"


def test_an_image_moved_to_another_class_gets_its_new_label(tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path / "train")
    _, before = decode(tree, tmp_path / "cache")
    (tree / "a" / "2.jpg").rename(tree / "b" / "9.jpg")
    _, after = decode(tree, tmp_path / "cache")
    assert before.tolist() == [0, 0, 0, 1, 1, 1] and after.tolist() == [0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("damage", ["overwritten", "truncated", "empty"])
def test_a_damaged_cache_is_named_and_rebuilt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    tree = tiny_tree(tmp_path / "train")
    images, labels = decode(tree, tmp_path / "cache")
    cache = next((tmp_path / "cache").glob("folder-*.pt"))
    data = bytearray(cache.read_bytes())
    if damage == "overwritten":  # inside the stored images, the file still loads
        start = data.find(bytes(images[0].flatten()[:64].tolist()))
        assert start > 0
        data[start : start + 64] = bytes([7]) * 64
    cache.write_bytes(data[: len(data) // 2] if damage == "truncated" else
                      b"" if damage == "empty" else bytes(data))  # fmt: skip
    again, again_labels = decode(tree, tmp_path / "cache")
    assert torch.equal(again, images) and torch.equal(again_labels, labels)
    assert f"decoded-image cache {cache} is not used" in capsys.readouterr().err
    assert decode(tree, tmp_path / "cache")[0].equal(images)  # rebuilt: loads cleanly now
    assert "is not used" not in capsys.readouterr().err


def test_a_file_that_is_no_image_is_named(tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path / "train")
    (tree / "b" / "x.jpg").write_text("not an image")
    with pytest.raises(ValueError, match=r"b/x\.jpg is not an image normlab can decode") as info:
        decode(tree, tmp_path / "cache")
    assert ".cpp" not in str(info.value)


def test_a_one_class_folder_is_refused_in_one_line(tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path / "train")
    for path in (tree / "b").iterdir():
        path.unlink()
    (tree / "b").rmdir()
    with pytest.raises(ValueError, match="holds 1 class folder"):
        decode(tree, tmp_path / "cache")
