"""Text -> token ids with a Hugging Face ``tokenizer.json`` (the ``tokenizers`` package: ``pip install
'quantcli[text]'``), as ``[data.text]`` declares.

* ``.txt``: one sample per non-blank line (blank lines are skipped); no labels.
* ``.jsonl``: one JSON object per non-blank line, the text under ``field`` (default ``text``) and, optionally on
  every line, an integer class id under ``label_field`` (default ``label``).

Each text is encoded once (special tokens per ``add_special_tokens``), truncated to ``max_length`` and, with
``padding = "max_length"``, padded to it with ``pad_id`` (default: the tokenizer's padding id, else 0).  The model's
integer inputs are fed by name: ``attention_mask`` (1 = token, 0 = padding), ``token_type_ids``, ``position_ids``
(0, 1, ...), and the one remaining integer input gets the ids (``input_ids`` by convention).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import QuantcliError
from .config import Padding, TextSettings
from .decoded import Decoded, require
from .specs import InputSpec

SUFFIXES = (".txt", ".jsonl")
DERIVED = ("attention_mask", "token_type_ids", "position_ids")


class TextFile(Decoded):
    kind = "text"

    def __init__(self, path: Path, specs: Sequence[InputSpec], settings: TextSettings) -> None:
        super().__init__(path, specs, settings)
        if not settings.tokenizer:
            raise QuantcliError(f"{path}: text data needs a tokenizer: set [data.text] tokenizer = "
                                "\"tokenizer.json\" in the recipe")
        if settings.max_length < 1:
            raise QuantcliError(f"[data.text] max_length: must be at least 1, got {settings.max_length}")
        self.tokenizer = _load_tokenizer(Path(settings.tokenizer), settings)
        self.roles = _roles(specs, path)
        self.equal_shapes = settings.padding == Padding.MAX_LENGTH
        self.files = [path]
        self.items, labels = _read(path, settings)
        self.labels = None if labels is None else np.asarray(labels, np.int64)

    def load(self, items: list) -> dict[str, np.ndarray]:
        try:
            encs = self.tokenizer.encode_batch(items, add_special_tokens=self.settings.add_special_tokens)
        except Exception as exc:  # the Rust core's errors (e.g. a WordLevel vocabulary without its unk token)
            raise QuantcliError(f"{self.path}: the tokenizer {self.settings.tokenizer} cannot encode this text "
                                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        fields = {"ids": [e.ids for e in encs], "attention_mask": [e.attention_mask for e in encs],
                  "token_type_ids": [e.type_ids for e in encs]}
        lengths = {len(x) for x in fields["ids"]}
        if len(lengths) > 1:
            raise QuantcliError(f"{self.path}: texts of different token lengths in one batch ({min(lengths)}.."
                                f"{max(lengths)}); use [data.text] padding = \"max_length\" or --batch-size 1")
        arrays = {k: np.asarray(v, np.int64).reshape(len(items), -1) for k, v in fields.items()}
        arrays["position_ids"] = np.broadcast_to(np.arange(arrays["ids"].shape[1]), arrays["ids"].shape)
        return {name: np.ascontiguousarray(arrays[role]) for name, role in self.roles.items()}


def _load_tokenizer(path: Path, s: TextSettings):
    tokenizers = require("tokenizers", "text data")
    if not path.is_file():
        raise QuantcliError(f"{path}: no such tokenizer file ([data.text] tokenizer)")
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust core raises plain Exceptions for bad JSON and unknown models
        raise QuantcliError(f"{path}: not a tokenizer.json the tokenizers package can read "
                            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    own = tok.padding or {}
    pad_id = s.pad_id if s.pad_id is not None else int(own.get("pad_id", 0))
    pad_token = own.get("pad_token") or tok.id_to_token(pad_id) or "[PAD]"
    tok.no_padding()
    tok.enable_truncation(max_length=s.max_length)
    if s.padding == Padding.MAX_LENGTH:
        tok.enable_padding(length=s.max_length, pad_id=pad_id, pad_token=pad_token)
    return tok


def _roles(specs: Sequence[InputSpec], path: Path) -> dict[str, str]:
    """Model input -> what feeds it (ids, attention_mask, token_type_ids, position_ids)."""
    roles = {s.name: s.name for s in specs if s.name in DERIVED}
    rest = [s for s in specs if s.name not in roles]
    if len(rest) != 1 or rest[0].dtype.kind not in "iu":
        names = ", ".join(f"{s.name} ({s.dtype})" for s in specs)
        raise QuantcliError(f"{path}: text feeds one integer ids input (plus attention_mask, token_type_ids, "
                            f"position_ids); this model's inputs are: {names}")
    roles[rest[0].name] = "ids"
    return roles


def _read(path: Path, s: TextSettings) -> tuple[list[str], list[int] | None]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise QuantcliError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    if path.suffix.lower() != ".jsonl":
        return [line for _, line in numbered], None
    texts, labels = [], []
    for i, line in numbered:
        text, label = _json_line(path, i, line, s)
        texts.append(text)
        labels.append(label)
    have = [x is not None for x in labels]
    if any(have) and not all(have):
        first = have.index(False) if have[0] else have.index(True)
        raise QuantcliError(f"{path}:{numbered[first][0]}: some lines have '{s.label_field}' and others do not")
    return texts, labels if all(have) and labels else None


def _json_line(path: Path, i: int, line: str, s: TextSettings) -> tuple[str, int | None]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise QuantcliError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(s.field), str):
        raise QuantcliError(f"{path}:{i}: expected an object with a string '{s.field}' ([data.text] field)")
    label = obj.get(s.label_field)
    if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
        raise QuantcliError(f"{path}:{i}: '{s.label_field}' must be an integer class id, got {label!r}")
    return obj[s.field], label
