"""Read a blosc2 contiguous frame's (`.b2nd`) header and trailer by hand, without blosc2: is the file as long as
the frame says, and are its header, chunk index, trailer and b2nd metalayer where and what they must be.

Where each offset comes from: c-blosc2's blosc/frame.h (FRAME_HEADER_MAGIC 2, FRAME_HEADER_LEN 11, FRAME_LEN 16,
FRAME_FLAGS 25, FRAME_TYPE 26, FRAME_NBYTES 30, FRAME_CBYTES 39, FRAME_TYPESIZE 48, FRAME_BLOCKSIZE 53,
FRAME_CHUNKSIZE 58, FRAME_HEADER_MINLEN 87, FRAME_METALAYERS 87, FRAME_TRAILER_MINLEN 25,
FRAME_TRAILER_LEN_OFFSET 22) and the way frame.c uses them (frame_from_file_offset: the trailer's 0xce marker at
frame_len - 23 and its length after it; get_coffsets: the chunk index at header_len + cbytes). Its
README_CFRAME_FORMAT.rst draws the same header but leaves out the blocksize field, so its chunk_size offset is
frame.h's blocksize; frame.h wins. All of it was checked against hex dumps of files nnU-Net 2.8 wrote (blosc2 4.x).
The header is msgpack, so its integers are big-endian (the .rst's "little endian" note is about the chunks); the
chunk index is a Blosc chunk, whose header fields are little-endian (README_CHUNK_FORMAT.rst).

Plain Python only: the daemon and `check` import this.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from typing import BinaryIO

HEADER_MINLEN = 87  # FRAME_HEADER_MINLEN: the fixed part of every frame's header
TRAILER_MINLEN = 25  # FRAME_TRAILER_MINLEN
TRAILER_LEN_OFFSET = 22  # FRAME_TRAILER_LEN_OFFSET: the trailer's length, counted back from the frame's end
CHUNK_HEADER_LEN = 32  # BLOSC_EXTENDED_HEADER_LENGTH: a Blosc2 chunk's header (the chunk index is one)
MAGIC = b"b2frame\x00"
HEADER_READ_LIMIT = 1 << 20  # a b2nd header is a few hundred bytes; never read more than this of one
# msgpack type markers frame.h's offsets sit behind: (offset of the marker, marker, what follows it)
_MARKERS = ((1, 0xA8, "magic string"), (10, 0xD2, "header length"), (15, 0xCF, "frame length"),
            (24, 0xA4, "flags"), (29, 0xD3, "uncompressed size"), (38, 0xD3, "compressed size"),
            (47, 0xD2, "type size"), (52, 0xD2, "block size"), (57, 0xD2, "chunk size"))
_SIMPLE_DTYPE = re.compile(r"^[<>|=]?[biufcmM](\d+)$")  # numpy's dtype.str for plain scalars: '<f4', '|i1'


class FrameError(ValueError):
    """The file is not an intact blosc2 frame; the message says why, in words."""


@dataclass(frozen=True)
class FrameInfo:
    """What a frame's header says about itself and the array it holds."""

    size: int  # the file's size
    header_len: int
    frame_len: int
    nbytes: int  # uncompressed bytes of all chunks (b2nd pads every chunk to whole blocks)
    cbytes: int  # compressed bytes of the chunks that are stored (special-value chunks store nothing)
    typesize: int
    chunksize: int
    nchunks: int
    shape: tuple[int, ...]  # from the b2nd metalayer
    chunkshape: tuple[int, ...]
    blockshape: tuple[int, ...]
    dtype: str


def _pread(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def read_frame(f: BinaryIO, size: int) -> FrameInfo:
    """Check the frame in the open regular file `f` of `size` bytes; FrameError says what is wrong.

    Reads the header (a few hundred bytes), the chunk index's 32-byte header and the last 25 bytes: a
    millisecond whatever the file's size."""
    if size == 0:
        raise FrameError("is empty (0 bytes)")
    head = _pread(f, 0, min(size, HEADER_READ_LIMIT))
    if size < HEADER_MINLEN:
        raise FrameError(f"is truncated ({size} bytes, shorter than a blosc2 frame's fixed header of "
                         f"{HEADER_MINLEN} bytes)")
    if head[:HEADER_MINLEN] == bytes(HEADER_MINLEN):
        # A power cut after the file system recorded the size but before the data reached the disk reads as zeros.
        raise FrameError("starts with zeros, not a blosc2 header: its data never reached the disk")
    if head[0] & 0xF0 != 0x90 or head[1] != 0xA8 or head[2:10] != MAGIC:
        raise FrameError("is not a blosc2 frame (no b2frame magic at its start)")
    for offset, marker, what in _MARKERS:
        if head[offset] != marker:
            raise FrameError(f"has a damaged header (byte {offset}, before the {what}, is 0x{head[offset]:02x}, "
                             f"not 0x{marker:02x})")
    header_len = struct.unpack_from(">i", head, 11)[0]
    frame_len = struct.unpack_from(">Q", head, 16)[0]
    if frame_len > size:
        raise FrameError(f"is truncated ({size} of {frame_len} bytes)")
    if head[26] & 0x0F != 0:
        raise FrameError(f"is not a contiguous blosc2 frame (frame type {head[26] & 0x0F})")
    if not HEADER_MINLEN <= header_len <= frame_len - TRAILER_MINLEN:
        raise FrameError(f"has a damaged header (header length {header_len} in a frame of {frame_len} bytes)")
    tail = _pread(f, frame_len - TRAILER_MINLEN, TRAILER_MINLEN)
    trailer_len = struct.unpack_from(">I", tail, TRAILER_MINLEN - TRAILER_LEN_OFFSET)[0]
    # The trailer ends with: 0xce, its uint32 length, 0xd8 (fixext 16), the fingerprint type and 16 bytes.
    if (tail[TRAILER_MINLEN - TRAILER_LEN_OFFSET - 1] != 0xCE or tail[TRAILER_MINLEN - 18] != 0xD8
            or not TRAILER_MINLEN <= trailer_len <= frame_len - header_len):
        extra = f", and the file has {size - frame_len} bytes past the frame's recorded end" if size > frame_len else ""
        raise FrameError(f"has no intact trailer at the frame's end (byte {frame_len}){extra}: an interrupted write")
    trailer_offset = frame_len - trailer_len
    if _pread(f, trailer_offset, 1)[0] & 0xF0 != 0x90:  # the trailer opens with a msgpack fixarray
        raise FrameError(f"has a damaged trailer (at byte {trailer_offset})")
    # Bytes after an intact trailer are ignored by blosc2 (it reads the frame it records, verified): not a problem.

    nbytes = struct.unpack_from(">q", head, 30)[0]
    cbytes = struct.unpack_from(">q", head, 39)[0]
    typesize = struct.unpack_from(">i", head, 48)[0]
    chunksize = struct.unpack_from(">i", head, 58)[0]
    if nbytes < 0 or cbytes < 0 or typesize <= 0 or (nbytes > 0 and chunksize <= 0):
        raise FrameError(f"has a damaged header (sizes {nbytes}/{cbytes}/{typesize}/{chunksize})")
    nchunks = math.ceil(nbytes / chunksize) if nbytes > 0 else 0  # as frame.c's get_header_info counts them
    if nchunks > 0:
        _check_index(f, head[25], header_len, cbytes, nchunks, trailer_offset)
    shape, chunkshape, blockshape, dtype = _b2nd_meta(head, header_len)
    _check_meta(shape, chunkshape, blockshape, dtype, chunksize, nchunks)
    return FrameInfo(size=size, header_len=header_len, frame_len=frame_len, nbytes=nbytes, cbytes=cbytes,
                     typesize=typesize, chunksize=chunksize, nchunks=nchunks, shape=shape, chunkshape=chunkshape,
                     blockshape=blockshape, dtype=dtype)


def _check_index(f: BinaryIO, flags: int, header_len: int, cbytes: int, nchunks: int, trailer_offset: int) -> None:
    """The chunk offsets: a Blosc chunk of nchunks offsets, right where blosc2 looks (header_len + cbytes)."""
    pos = header_len + cbytes
    if pos + CHUNK_HEADER_LEN > trailer_offset:
        raise FrameError(f"has no room for its chunk index (at byte {pos}, the trailer starts at {trailer_offset})")
    chunk = _pread(f, pos, CHUNK_HEADER_LEN)
    offset_size = 4 << ((flags >> 4) & 0x3)  # general flags bits 4-5: 32, 64, 128 or 256-bit offsets
    idx_typesize = chunk[3]
    idx_nbytes, _, idx_cbytes = struct.unpack_from("<iii", chunk, 4)
    if (idx_typesize != offset_size or idx_nbytes != nchunks * offset_size
            or not CHUNK_HEADER_LEN <= idx_cbytes <= trailer_offset - pos):
        raise FrameError(f"has a damaged chunk index (at byte {pos}: {idx_nbytes} bytes of {idx_typesize}-byte "
                         f"offsets for {nchunks} chunks)")


class _Msgpack:
    """The little of msgpack a b2nd metalayer uses, bounded by its buffer."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise FrameError("has a damaged b2nd metalayer (it runs past the header)")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def value(self, depth: int = 0) -> object:
        if depth > 4:
            raise FrameError("has a damaged b2nd metalayer (nested too deep)")
        b = self.take(1)[0]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0x90 <= b <= 0x9F:
            return [self.value(depth + 1) for _ in range(b & 0x0F)]
        if 0xA0 <= b <= 0xBF:
            return self.take(b & 0x1F).decode("utf-8", "replace")
        ints = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
        if b in ints:
            fmt = ints[b]
            return int(struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0])
        strs = {0xD9: ">B", 0xDA: ">H", 0xDB: ">I"}
        if b in strs:
            fmt = strs[b]
            n = struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
            return self.take(n).decode("utf-8", "replace")
        if b == 0xDC:
            n = struct.unpack(">H", self.take(2))[0]
            if n > len(self.buf) - self.pos:  # every element takes a byte at least
                raise FrameError("has a damaged b2nd metalayer (an impossible array length)")
            return [self.value(depth + 1) for _ in range(n)]
        raise FrameError(f"has a damaged b2nd metalayer (msgpack type 0x{b:02x} where none is expected)")


def _b2nd_meta(head: bytes, header_len: int) -> tuple[tuple[int, ...], tuple[int, ...],
                                                                  tuple[int, ...], str]:
    """Shape, chunk shape, block shape and dtype from the 'b2nd' metalayer (c-blosc2 b2nd.c b2nd_serialize_meta)."""
    buf = head[:header_len]  # the metalayers end the header; a header past HEADER_READ_LIMIT is cut (b2nd is first)
    # FRAME_METALAYERS (87): fixarray(3) [uint16 idx size, map16 {name: int32 offset}, array16 [bin32 content]]
    if len(buf) < HEADER_MINLEN + 7 or buf[87] & 0xF0 != 0x90 or buf[88] != 0xCD or buf[91] != 0xDE:
        raise FrameError("has no b2nd metalayer: a blosc2 SChunk, not the NDArray nnU-Net reads")
    count = struct.unpack_from(">H", buf, 92)[0]
    reader = _Msgpack(buf, 94)
    offset = None
    for _ in range(count):
        name = reader.value()
        marker = reader.take(1)[0]
        if marker != 0xD2:
            raise FrameError("has a damaged metalayer map (where the b2nd metalayer is found)")
        where = struct.unpack(">i", reader.take(4))[0]
        if name == "b2nd":
            offset = where
    if offset is None:
        raise FrameError("has no b2nd metalayer: a blosc2 SChunk, not the NDArray nnU-Net reads")
    if not 0 < offset <= len(buf) - 5 or buf[offset] != 0xC6:  # bin32 holding the metalayer's msgpack
        raise FrameError(f"has a damaged b2nd metalayer (offset {offset})")
    length = struct.unpack_from(">I", buf, offset + 1)[0]
    content = buf[offset + 5:offset + 5 + length]
    meta = _Msgpack(content, 0).value()
    # [version, ndim, shape (int64s), chunkshape (int32s), blockshape (int32s), dtype format, dtype]
    if not (isinstance(meta, list) and len(meta) >= 7 and all(isinstance(meta[i], list) for i in (2, 3, 4))
            and isinstance(meta[1], int) and isinstance(meta[6], str)):
        raise FrameError("has a damaged b2nd metalayer (not [version, ndim, shape, chunks, blocks, format, dtype])")
    dims = [tuple(int(x) if isinstance(x, int) else -1 for x in meta[i]) for i in (2, 3, 4)]
    return dims[0], dims[1], dims[2], meta[6]


def _check_meta(shape: tuple[int, ...], chunkshape: tuple[int, ...], blockshape: tuple[int, ...], dtype: str,
                chunksize: int, nchunks: int) -> None:
    """The metalayer and the frame header describe the same array."""
    ndim = len(shape)
    if (len(chunkshape) != ndim or len(blockshape) != ndim or any(s < 0 for s in shape)
            or any(c <= 0 for c in chunkshape) or any(b <= 0 for b in blockshape)):
        raise FrameError(f"has a damaged b2nd metalayer (shape {shape}, chunks {chunkshape}, blocks {blockshape})")
    expected = math.prod(-(-s // c) for s, c in zip(shape, chunkshape, strict=True)) if all(shape) else 0
    if expected != nchunks:
        raise FrameError(f"holds {nchunks} chunks, its shape {shape} in chunks of {chunkshape} needs {expected}")
    simple = _SIMPLE_DTYPE.match(dtype)
    # b2nd pads each chunk to whole blocks (b2nd.c: extchunkshape), and a chunk of the frame is that padded chunk
    padded = tuple(-(-c // b) * b for c, b in zip(chunkshape, blockshape, strict=True))
    if simple and nchunks and chunksize != math.prod(padded) * int(simple.group(1)):
        raise FrameError(f"has chunks of {chunksize} bytes, {chunkshape} (padded to {padded}) of {dtype} are "
                         f"{math.prod(padded) * int(simple.group(1))}")
