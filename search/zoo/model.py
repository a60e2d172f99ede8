"""The demo pool's model family: a character-level tokenizer and a small Llama."""

from __future__ import annotations

from typing import Any

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3
CHARACTERS = tuple(chr(c) for c in range(32, 127)) + ("\n",)  # printable ASCII and newline
# A small chat template (Jinja, characters of the vocabulary only), so that lm-eval's
# apply_chat_template path runs for real on the demo pool. It is used only when asked
# (eval.apply_chat_template); the models never saw it in training.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] + '\\n' }}"
    "{% elif m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\\n' }}"
    "{% else %}{{ 'A: ' + m['content'] + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'A: ' }}{% endif %}"
)


def char_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast``: one token per character, ``<s>`` prepended.

    Built with the ``tokenizers`` library (BPE without merges = characters, ``Fuse`` decoder),
    so it saves with ``save_pretrained`` and reloads offline with ``AutoTokenizer``. It carries
    :data:`CHAT_TEMPLATE` (saved as ``chat_template.jinja``).
    """
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
    )


def encode(text: str) -> list[int]:
    """Token ids of ``text`` as :func:`char_tokenizer` gives them (``<s>`` first), without it."""
    offset = len(SPECIAL_TOKENS)
    index = {c: i + offset for i, c in enumerate(CHARACTERS)}
    return [1] + [index.get(c, 3) for c in text]


def llama_config(hidden: int, layers: int, heads: int, intermediate: int, context: int = 64) -> Any:
    """A small Llama config for the character vocabulary.

    Embeddings are untied: every tensor is stored, merged and exported as itself.
    """
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(SPECIAL_TOKENS) + len(CHARACTERS),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=context,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
