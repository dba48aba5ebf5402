"""The files of a transformers model directory, and safetensors read lazily / written streaming.

A model directory is ``config.json`` plus ``model.safetensors``, or shards listed in
``model.safetensors.index.json`` (``{"weight_map": {name: file}}``), plus any tokenizer files.
:class:`SafetensorsDir` opens the weight files with ``safetensors.safe_open`` and reads one
tensor, or one block of rows, at a time; :class:`SafetensorsStream` writes a ``.safetensors``
file tensor by tensor. Neither ever holds more than the tensor (or block) at hand, so merging
and the small-from-base initialisation (:mod:`mmbert.merge`) stay within a small multiple of the
largest tensor; :mod:`mmbert.hf` loads models through the same reader.

This module knows files, names, shapes and dtypes only: what the tensors mean (name prefixes,
tied weights, the loading policy) is :mod:`mmbert.hf`'s business.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Iterator, Sequence

import torch

from mmbert.errors import MmbertError
from mmbert.outputs import read_json

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
# The tokenizer files a model directory carries along (config.json may name ids taken from them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model")
# Merging and init-small also carry the added tokens of a transformers "slow" tokenizer.
TOKENIZER_FILES_WITH_ADDED = TOKENIZER_FILES + ("added_tokens.json",)

# safetensors' dtype codes
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
          "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}


def copy_tokenizer(src: Path, dst: Path, names: Sequence[str] = TOKENIZER_FILES) -> list[str]:
    """Copy the tokenizer files ``names`` that ``src`` has into ``dst``; returns those copied."""
    found = [f for f in names if (src / f).is_file()]
    for f in found:
        shutil.copyfile(src / f, dst / f)
    return found


# =============================================================================================
# Reading
# =============================================================================================

def _corrupt(f: Path, e: Exception) -> MmbertError:
    size = f.stat().st_size if f.is_file() else 0
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return MmbertError(f"{f}: truncated or corrupt safetensors file ({size} bytes: {msg}); "
                       f"expected a complete model.safetensors")


def read_index(d: Path) -> dict[str, str]:
    """``{tensor name: file}`` of a sharded directory's ``model.safetensors.index.json``; every
    file it lists must exist."""
    index = d / INDEX
    weight_map = read_json(index, "a safetensors index").get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str)
                                                   for v in weight_map.values()):
        raise MmbertError(f"{index}: no 'weight_map' object; expected a safetensors index "
                          f"({{'weight_map': {{name: file}}}})")
    file_of = {str(k): v for k, v in weight_map.items()}
    missing = [f for f in sorted(set(file_of.values())) if not (d / f).is_file()]
    if missing:
        raise MmbertError(f"{index}: lists shard {missing[0]} which does not exist")
    return file_of


class SafetensorsDir:
    """The weights of a model directory, read lazily: ``names``, ``shape``, ``dtype``, ``read``,
    ``rows`` and ``iter_tensors``. ``label`` (``--base``, ...) prefixes errors about the
    directory itself."""

    def __init__(self, path: str | Path, label: str = "") -> None:
        self.path = d = Path(path)
        where = f"{label} {d}" if label else str(d)
        if (d / WEIGHTS).is_file():
            self._file_of: dict[str, str] | None = None
            files = [WEIGHTS]
        elif (d / INDEX).is_file():
            self._file_of = read_index(d)
            files = sorted(set(self._file_of.values()))
        else:
            raise MmbertError(f"{where}: no {WEIGHTS} (or {INDEX}); expected transformers "
                              "safetensors weights (pytorch_model.bin is not read: it would need "
                              "unpickling)")
        self._handles = {f: self._open(d / f) for f in files}
        if self._file_of is None:
            self._file_of = {k: WEIGHTS for k in self._handles[WEIGHTS].keys()}
        self._slices: dict[str, object] = {}

    @staticmethod
    def _open(f: Path):
        from safetensors import safe_open

        try:
            return safe_open(str(f), framework="pt")
        except Exception as e:  # safetensors raises several types for bad files
            raise _corrupt(f, e) from None

    @property
    def files(self) -> list[Path]:
        """The weight files, in name order."""
        return [self.path / f for f in self._handles]

    @property
    def names(self) -> list[str]:
        """Tensor names (those of the index, for a sharded directory), sorted."""
        return sorted(self._file_of)

    def _slice(self, name: str):
        if name not in self._slices:
            try:
                self._slices[name] = self._handles[self._file_of[name]].get_slice(name)
            except Exception as e:
                raise MmbertError(f"{self.path}: cannot read tensor {name!r} ({e})") from None
        return self._slices[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        code = self._slice(name).get_dtype()
        if code not in DTYPES:
            raise MmbertError(f"{self.path}: tensor {name!r} has dtype {code}; expected one of "
                              f"{sorted(DTYPES)}")
        return DTYPES[code]

    def read(self, name: str) -> torch.Tensor:
        return self._handles[self._file_of[name]].get_tensor(name)

    def rows(self, name: str, a: int, b: int) -> torch.Tensor:
        """Rows ``a:b`` of the tensor (the whole tensor for 0-d tensors)."""
        if len(self.shape(name)) == 0:
            return self.read(name)
        return self._slice(name)[a:b]

    def iter_tensors(self) -> Iterator[tuple[Path, str, torch.Tensor]]:
        """Yield (file, stored name, tensor) for every tensor of every weight file, file by file
        (a shard's tensors the index does not list included). A truncated or corrupt file raises
        MmbertError saying so."""
        from safetensors import SafetensorError

        for f, handle in self._handles.items():
            try:
                for name in handle.keys():
                    yield self.path / f, name, handle.get_tensor(name)
            except (SafetensorError, OSError, RuntimeError, ValueError) as e:
                raise _corrupt(self.path / f, e) from None


# =============================================================================================
# Writing
# =============================================================================================

_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def save_file(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """``safetensors.torch.save_file`` with format metadata ``pt``. safetensors reports an I/O
    failure (a full disk, a read-only directory) as a ``SafetensorError`` holding the OS error
    code; it is raised here as the ``OSError`` it is, so writers treat it like any failed
    write (:func:`mmbert.outputs.write_error`)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file as _save_file

    try:
        _save_file(tensors, str(path), metadata={"format": "pt"})
    except SafetensorError as e:
        m = _OS_ERROR.search(str(e))
        if m is None:
            raise
        code = int(m.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


class SafetensorsStream:
    """Write a ``.safetensors`` file tensor by tensor (and block of rows by block of rows).

    The header (names, dtypes, shapes, offsets) is known up front, so nothing but the block being
    written needs to be in memory. Tensors must be written in the order of ``specs``.
    """

    def __init__(self, path: Path, specs: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> None:
        header: dict[str, object] = {}
        offset = 0
        self._todo: list[tuple[str, torch.dtype, int]] = []
        for name, dtype, shape in specs:
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": DTYPE_CODES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            self._todo.append((name, dtype, nbytes))
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self._f = open(path, "wb")
        self._f.write(struct.pack("<Q", len(raw)))
        self._f.write(raw)
        self._i, self._left = -1, 0
        self._next()

    def _next(self) -> None:
        """Move to the next tensor that still needs bytes (zero-size tensors need none)."""
        while self._left == 0 and self._i + 1 < len(self._todo):
            self._i += 1
            self._left = self._todo[self._i][2]

    def write(self, name: str, t: torch.Tensor) -> None:
        want, dtype, _ = self._todo[self._i]
        assert name == want and t.dtype == dtype, (name, want, t.dtype, dtype)
        data = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        assert data.nbytes <= self._left, f"{name}: more data than its shape"
        self._f.write(memoryview(data))
        self._left -= data.nbytes
        self._next()

    def __enter__(self) -> "SafetensorsStream":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:  # the temp directory is deleted by the caller
            self._f.close()
            return
        assert self._left == 0 and self._i == len(self._todo) - 1, "not every tensor was written"
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
