"""Write tiny_lm's tokenizer and its calibration text, the inputs ``quantcli --data TEXT`` reads:

* ``tiny_lm-tokenizer.json``: a Hugging Face ``tokenizers`` tokenizer, one token per character (the 103 characters
  of ``tiny_lm-vocab.json`` in id order: a WordLevel model over a split into single characters);
* ``tiny_lm-calib.jsonl``: the 128 calibration windows of ``tiny_lm-calib.npz`` as text, one JSON object per line
  (``{"text": ...}``: JSON keeps the windows' newlines inside one line).

    python sample_models/tiny_lm_text.py      # needs numpy and tokenizers (pip install 'quantcli[text]')

Encoding each line with the tokenizer gives back exactly the ids in ``tiny_lm-calib.npz`` (tests check it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def build_tokenizer(chars: list[str]):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=chars[1]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return tok


def main() -> None:
    chars = json.loads((HERE / "tiny_lm-vocab.json").read_text())
    build_tokenizer(chars).save(str(HERE / "tiny_lm-tokenizer.json"))
    ids = np.load(HERE / "tiny_lm-calib.npz")["input_ids"]
    lines = [json.dumps({"text": "".join(chars[i] for i in row)}, ensure_ascii=False) for row in ids]
    (HERE / "tiny_lm-calib.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote tiny_lm-tokenizer.json ({len(chars)} tokens) and tiny_lm-calib.jsonl ({len(lines)} lines)")


if __name__ == "__main__":
    main()
