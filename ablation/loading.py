"""Load a model from a Hugging Face id, a local folder or a GGUF file.

Models whose config has a vision tower load with their multimodal class (Qwen3.5, Gemma 3), so
nothing is dropped and an export keeps the original architecture; the language model inside is
what gets edited. ``trust_remote_code`` stays off unless asked for; safetensors are preferred.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedModel,
)

from abliterate.ablation.architectures import architecture_of
from abliterate.ablation.errors import ModelLoadError, first_line
from abliterate.ablation.hub import hub_options
from abliterate.ablation.locate import local_model

DTYPES = {"auto": None, "stored": None, "float32": torch.float32, "fp32": torch.float32,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    """A model, its tokenizer (and processor, for multimodal models) and where it came from."""

    model: PreTrainedModel
    tokenizer: Any  # a transformers tokenizer; None when loaded with tokenizer=False
    source: str
    processor: Any = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def format_chat(self, prompts: Sequence[str], system: str | None = None, enable_thinking: bool | None = None) -> list[str]:
        """Each prompt as a single user turn in the model's chat template, ready for generation.

        ``enable_thinking=False`` turns thinking off for templates that support it (Qwen3/3.5).
        """
        if not getattr(self.tokenizer, "chat_template", None):
            raise ModelLoadError(
                f"{self.source} has no chat template; use an instruct model or one whose "
                "tokenizer_config.json sets chat_template"
            )
        extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        texts = []
        for prompt in prompts:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
            texts.append(self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **extra
            ))
        return texts


def load_model(
    spec: str,
    dtype: str = "auto",
    device: str = "auto",
    device_map: str | None = None,
    trust_remote_code: bool = False,
    tokenizer: bool = True,
) -> LoadedModel:
    """Load ``spec`` (hub id, local folder or .gguf file) for editing.

    ``dtype="auto"`` means bfloat16 on a GPU and float32 on the CPU; ``"stored"``, the dtype the
    checkpoint's config states (else its weights'; a GGUF file's, dequantised, get auto's). ``device_map`` (for
    example ``"auto"``) spreads a model over several GPUs and overrides ``device``.
    ``tokenizer=False`` loads the weights alone (``LoadedModel.tokenizer`` is None), for what
    needs no text, like listing the residual writers; otherwise a folder without tokenizer files
    is refused in one line that names them.
    """
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    check_device(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype: torch.dtype | str = DTYPES[dtype] or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    location, options = _resolve(spec)
    if dtype == "stored" and "gguf_file" not in options:  # a GGUF file's weights are dequantised to the default
        torch_dtype = "auto"
    common = dict(trust_remote_code=trust_remote_code, **options)
    try:
        config = AutoConfig.from_pretrained(location, **common)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(_explain(spec, error)) from None
    architecture_of(config)  # fail before reading gigabytes of weights
    if tokenizer:
        _check_tokenizer_files(spec, location, options)
    model_class = AutoModelForImageTextToText if _is_multimodal(config) else AutoModelForCausalLM
    placement = {"device_map": device_map} if device_map else {}
    # With PEFT installed, transformers' auto classes look for an adapter on the hub without the
    # local_files_only they were given, and an unreachable hub is then retried for half a minute.
    adapter = {"adapter_kwargs": {"local_files_only": True}} if options.get("local_files_only") else {}
    try:
        model = model_class.from_pretrained(location, dtype=torch_dtype, **placement, **common, **adapter)
    except (OSError, ValueError, SafetensorError, pickle.UnpicklingError) as error:
        # A truncated safetensors file, or a pickled .bin that torch refuses to unpickle (right:
        # it could run code), is one line, not a traceback.
        raise ModelLoadError(_explain(spec, error)) from None
    if "gguf_file" in options:
        model = _detach_from_gguf(model)
    if not device_map:
        model = model.to(device)
    if not tokenizer:
        return LoadedModel(model.eval(), None, spec)
    processor = _processor(location, common) if model_class is AutoModelForImageTextToText else None
    return LoadedModel(model.eval(), _tokenizer(spec, location, common), spec, processor)


def check_device(device: str) -> None:
    """A one-line error for a device this machine does not have (torch would assert later)."""
    if device in ("auto", "cpu") or device is None:
        return
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ModelLoadError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelLoadError(f"device {device}: this machine has no CUDA GPU that torch can use; use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ModelLoadError(f"device {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")


def check_model(spec: str, devices: Sequence[str] = ("auto",), trust_remote_code: bool = False, dtype: str = "auto") -> None:
    """Fail now, in one line, on what would make every worker fail: a missing or unreadable model,
    an unknown architecture or dtype, no tokenizer, a device this machine lacks, or a local
    folder's weight file that is damaged or that the loader would refuse. Reads the weight
    files' headers, not the weights."""
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    for device in devices:
        check_device(device)
    location, options = _resolve(spec)
    common = dict(trust_remote_code=trust_remote_code, **options)
    try:
        config = AutoConfig.from_pretrained(location, **common)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(_explain(spec, error)) from None
    architecture_of(config)
    if "gguf_file" not in options and Path(location).is_dir():
        _check_weight_files(spec, Path(location))
    _check_tokenizer_files(spec, location, options)
    _tokenizer(spec, location, common)


def _check_weight_files(spec: str, folder: Path) -> None:
    """A one-line error for a folder whose weights transformers would fail on: none at all, a
    safetensors file whose header is damaged or does not cover the file (a truncated copy), a
    shard its index names that is missing, or a pickled ``.bin`` that torch's weights-only
    unpickler refuses (it would run code). Looks where transformers looks, in its order."""
    from safetensors import safe_open
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    for single, index in ((SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME), (WEIGHTS_NAME, WEIGHTS_INDEX_NAME)):
        if (folder / single).is_file():
            files = [folder / single]
        elif (folder / index).is_file():
            files = [folder / name for name in _shards(spec, folder / index)]
        else:
            continue
        for path in files:
            try:
                if path.suffix == ".safetensors":
                    with safe_open(path, "pt"):
                        pass
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # "pickle protocol 4" notes
                        # The pickle alone is read and checked: on the meta device no tensor data is.
                        torch.load(path, map_location="meta", weights_only=True)
            except FileNotFoundError:
                raise ModelLoadError(f"cannot load {spec}: {path.name}, which {index} names, is missing; copy the whole model folder") from None
            except pickle.UnpicklingError:
                raise ModelLoadError(f"cannot load {spec}: {path.name} is a pickle that torch refuses to load (it could run code); "
                                     "use the model's safetensors files instead") from None
            except (OSError, SafetensorError, RuntimeError, EOFError) as error:
                raise ModelLoadError(f"cannot load {spec}: {path.name} is damaged ({first_line(error, 120)}); "
                                     "copy the model again") from None
        return
    raise ModelLoadError(f"cannot load {spec}: the folder holds no weights ({SAFE_WEIGHTS_NAME}, {SAFE_WEIGHTS_INDEX_NAME}, "
                         f"{WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}); copy the whole model folder")


def _shards(spec: str, index: Path) -> list[str]:
    """The weight files a sharded checkpoint's index names."""
    import json

    try:
        return sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ModelLoadError(f"cannot load {spec}: {index.name} is not a weight index (no weight_map); copy the model again") from None


# A tokenizer is built from one of these (besides its tokenizer_config.json): the fast tokenizer's
# file, a sentencepiece or tiktoken model, or a BPE / WordPiece vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json", "vocab.txt",
                   "tiktoken.model")


def _check_tokenizer_files(spec: str, location: str, options: dict) -> None:
    """A one-line error naming the files a local folder lacks to make a tokenizer (a GGUF file
    carries its own; the hub's files are the hub's to check)."""
    folder = Path(location)
    if "gguf_file" in options or not folder.is_dir():
        return
    if not any((folder / name).is_file() for name in TOKENIZER_FILES) and not any(folder.glob("*.tiktoken")):
        raise ModelLoadError(f"{spec} has no tokenizer: none of tokenizer.json, tokenizer.model or vocab.json (with merges.txt) "
                             "is in the folder; copy the base model's tokenizer files into it (abliterate inspect needs none)")


def _tokenizer(spec: str, location: str, common: dict):
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **common)
    except (OSError, ValueError, TypeError) as error:
        raise ModelLoadError(f"cannot load the tokenizer of {spec}: {_explain(spec, error).split(': ', 1)[-1]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _resolve(spec: str) -> tuple[str, dict]:
    """(folder or hub id, the ``from_pretrained`` options it needs: a GGUF file's name, or to stay
    off an unreachable hub), or a one-line error for a bad path or a name nothing can provide."""
    return local_model(spec) or (spec, hub_options(spec))


def _is_multimodal(config) -> bool:
    return getattr(config, "vision_config", None) is not None


def _processor(location, common):
    try:
        return AutoProcessor.from_pretrained(location, **common)
    except (OSError, ValueError, TypeError):
        return None  # a checkpoint without processor files still exports; the tokenizer is kept


def _detach_from_gguf(model: PreTrainedModel) -> PreTrainedModel:
    """Turn a GGUF-loaded model into an ordinary one that edits and exports like any other.

    transformers dequantizes these GGUF files into plain float tensors but keeps its quantizer
    attached, which makes save_pretrained refuse and would write quant_method=gguf into the
    exported config. Newer GGUF paths can keep packed weights; those are refused here.
    """
    packed = [name for name, p in model.named_parameters() if not p.is_floating_point()]
    if packed:
        raise ModelLoadError(
            f"this GGUF model keeps packed weights ({packed[0]}, ...); convert it to a Hugging Face "
            "folder first (load it with transformers and save_pretrained)"
        )
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    model.config.__dict__.pop("quantization_config", None)
    return model


def _explain(spec: str, error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "does not recognize this architecture" in str(error) or "model_type" in str(error):
        return f"cannot load {spec}: unknown architecture ({text})"
    if not Path(spec).exists():
        return f"cannot load {spec}: not a local path and the hub could not provide it ({text}); pass a local folder or .gguf file when offline"
    return f"cannot load {spec}: {text}"
