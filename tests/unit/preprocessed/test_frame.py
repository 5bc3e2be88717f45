"""The hand-read blosc2 frame header: every file blosc2 and nnU-Net write is whole, every cut one is not."""

from __future__ import annotations

import io
from pathlib import Path

import blosc2
import numpy as np
import pytest

from supervisor.preprocessed.frame import FrameError, FrameInfo, read_frame
from tests.unit.preprocessed.cases import arrays, properties, save_case


def frame_of(raw: bytes) -> FrameInfo:
    return read_frame(io.BytesIO(raw), len(raw))


def problem_of(raw: bytes) -> str:
    with pytest.raises(FrameError) as exc:
        frame_of(raw)
    return str(exc.value)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A case's image as nnU-Net writes it, several chunks."""
    folder = tmp_path_factory.mktemp("small")
    data, seg = arrays((1, 20, 18, 14))
    save_case(folder, "c", data, seg, properties(data, seg), patch=(8, 8, 8))
    return (folder / "c.b2nd").read_bytes()


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Over 16 MB: blosc2.asarray then fills an empty frame chunk by chunk (the path real cases take)."""
    path = tmp_path_factory.mktemp("large") / "big.b2nd"
    data, _ = arrays((1, 168, 160, 160))
    assert data.nbytes > 2**24
    blosc2.asarray(data, urlpath=str(path), chunks=(1, 64, 64, 64), blocks=(1, 32, 32, 32), mode="w")
    return path.read_bytes()


SHAPES = [((1, 20, 18, 14), (16, 16, 16)), ((2, 33, 17, 9), (8, 8, 8)), ((3, 7, 5, 3), (4, 4, 4)),
          ((1, 1, 64, 48), (32, 24)), ((1, 12, 40, 40), (32, 32)), ((4, 9, 9, 9), (64, 64, 64))]


@pytest.mark.parametrize(("shape", "patch"), SHAPES)
def test_every_case_nnunets_save_case_writes_is_whole(tmp_path: Path, shape: tuple[int, ...],
                                                       patch: tuple[int, ...]) -> None:
    data, seg = arrays(shape)
    save_case(tmp_path, "c", data, seg, properties(data, seg), patch)
    image = frame_of((tmp_path / "c.b2nd").read_bytes())
    label = frame_of((tmp_path / "c_seg.b2nd").read_bytes())
    opened = blosc2.open(str(tmp_path / "c.b2nd"), mode="r")
    assert image.shape == shape and image.dtype == "<f4" and image.chunkshape == tuple(opened.chunks)
    assert image.nchunks == opened.schunk.nchunks
    assert label.shape == (1, *shape[1:]) and label.dtype == "<i2"


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("content", ["random", "zeros", "constant"])
def test_any_array_blosc2_writes_is_whole(tmp_path: Path, dtype: type, content: str) -> None:
    rng = np.random.default_rng(3)
    shape = (1, 23, 19, 11)
    values = {"random": rng.integers(0, 100, shape), "zeros": np.zeros(shape), "constant": np.full(shape, 7)}[content]
    for codec in (blosc2.Codec.LZ4HC, blosc2.Codec.ZSTD, blosc2.Codec.BLOSCLZ):
        path = tmp_path / f"{codec.name}.b2nd"
        blosc2.asarray(values.astype(dtype), urlpath=str(path), chunks=(1, 8, 8, 11), blocks=(1, 4, 4, 11),
                       mode="w", cparams={"codec": codec, "clevel": 5})
        info = frame_of(path.read_bytes())
        assert info.shape == shape and info.nchunks == 9 and info.size == info.frame_len


def test_a_large_array_is_whole_and_every_cut_of_it_is_not(large: bytes) -> None:
    info = frame_of(large)
    assert info.nchunks == 3 * 3 * 3 and info.frame_len == len(large)
    cuts = sorted({*range(0, len(large), len(large) // 97), *range(len(large) - 64, len(large))})
    for n in cuts:
        assert "truncated" in problem_of(large[:n]) or n == 0


def test_every_strict_prefix_of_a_frame_is_a_problem(small: bytes) -> None:
    for n in range(len(small)):  # a copy or a write cut at any byte
        problem = problem_of(small[:n])
        assert (problem == "is empty (0 bytes)") if n == 0 else ("truncated" in problem)


def test_the_message_gives_both_lengths(small: bytes) -> None:
    assert problem_of(small[:100]) == f"is truncated (100 of {len(small)} bytes)"
    assert problem_of(small[:50]) == "is truncated (50 bytes, shorter than a blosc2 frame's fixed header of 87 bytes)"


def test_zeros_where_the_data_should_be(small: bytes) -> None:
    assert "never reached the disk" in problem_of(bytes(len(small)))
    tail_lost = small[: len(small) // 2] + bytes(len(small) - len(small) // 2)  # size recorded, tail never written
    assert "no intact trailer" in problem_of(tail_lost)


def test_bytes_after_an_intact_frame_are_not_damage(tmp_path: Path, small: bytes) -> None:
    """blosc2 reads the frame its header records and ignores what follows: the array is the same."""
    (tmp_path / "a.b2nd").write_bytes(small)
    (tmp_path / "b.b2nd").write_bytes(small + b"\x00" * 4096)
    frame_of(small + b"\x00" * 4096)
    same = [blosc2.open(str(tmp_path / n), mode="r")[...] for n in ("a.b2nd", "b.b2nd")]
    assert np.array_equal(same[0], same[1])


def test_damage_in_the_header_index_or_trailer_is_named(small: bytes) -> None:
    def poke(offset: int, value: int) -> bytes:
        raw = bytearray(small)
        raw[offset] = value
        return bytes(raw)

    info = frame_of(small)
    assert problem_of(b"PK\x03\x04" + small[4:]) == "is not a blosc2 frame (no b2frame magic at its start)"
    assert "damaged header" in problem_of(poke(29, 0x00))
    index = info.header_len + info.cbytes
    assert "chunk index" in problem_of(poke(index + 3, 4))  # the offsets' type size
    assert "no intact trailer" in problem_of(poke(len(small) - 23, 0x00))
    assert "metalayer" in problem_of(poke(94, 0x00))  # the metalayer map's first name


def test_a_frame_filled_chunk_by_chunk_and_stopped_midway_reads_whole(tmp_path: Path) -> None:
    """What a write killed inside blosc2.asarray leaves for a large array: blosc2.empty, then some chunks updated.
    Header and trailer are rewritten after each chunk, so the frame is consistent; the missing chunks read as zeros.
    The frame check cannot see this; the properties pickle nnU-Net writes after both arrays is what is missing."""
    path = tmp_path / "killed.b2nd"
    arr = blosc2.empty((1, 64, 64, 64), dtype=np.float32, chunks=(1, 32, 32, 32), blocks=(1, 16, 16, 16),
                       urlpath=str(path), mode="w")
    rng = np.random.default_rng(0)
    for i in range(3):
        arr.schunk.update_data(i, rng.standard_normal((1, 32, 32, 32)).astype(np.float32), copy=True)
    del arr
    info = frame_of(path.read_bytes())
    assert info.nchunks == 8 and info.frame_len == path.stat().st_size
