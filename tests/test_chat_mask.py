"""Chat-template loss masks when a response's leading whitespace merges into the prompt's last token."""

from __future__ import annotations

from actindex.core.encode import encode_row
from actindex.core.rows import normalise_record

PROMPT_END = 7  # the generation prompt's last token ("assistant\n")
MERGED = 77  # "\n" merged with the response's leading space: one token, unlike PROMPT_END


class MergingTokenizer:
    """A chat tokenizer whose renders are not prefixes of each other at the assistant turn.

    ``[1, len(user)] + [PROMPT_END]`` is the generation prompt; the full render replaces
    ``PROMPT_END`` by ``MERGED`` when the response starts with a space, as BPE tokenizers do.
    """

    chat_template = "fake"
    eos_token_id = 2

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, return_dict):
        ids = [1]
        for m in messages:
            if m["role"] == "user":
                ids += [10 + len(m["content"]), PROMPT_END]
            else:
                words = m["content"].split()
                if m["content"].startswith(" "):
                    ids[-1] = MERGED
                ids += [100 + len(w) for w in words] + [2]
        return {"input_ids": ids}


def _encode(response: str):
    record = {"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": response}]}
    return encode_row(MergingTokenizer(), normalise_record("<t>", 1, 0, record))


def test_plain_response_masks_exactly_the_response_tokens():
    enc = _encode("two words")
    assert enc.input_ids == [1, 18, PROMPT_END, 103, 105, 2]
    assert enc.loss_mask == [False, False, False, True, True, True]


def test_leading_space_response_starts_at_the_merged_token():
    enc = _encode(" two words")
    assert enc.input_ids == [1, 18, MERGED, 103, 105, 2]
    # the merged token carries the response's first character, so it is trained on; nothing before it
    assert enc.loss_mask == [False, False, True, True, True, True]
