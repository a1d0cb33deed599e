"""Tokenizer, corpus, split and batching (retnet_mini.data). Offline; a few seconds on 2 cores."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.error

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retnet_mini import data as data_mod
from retnet_mini.data import (
    CharTokenizer,
    get_batch,
    load_corpus,
    prepare_corpus,
    sequential_batches,
    split_train_val,
)

TEXT = load_corpus("python-docs")
TOK = CharTokenizer.from_text(TEXT)


# --- tokenizer ------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(TOK.chars), max_size=300))
def test_round_trip_over_the_corpus_vocabulary(s: str) -> None:
    ids = TOK.encode(s)
    assert len(ids) == len(s)
    assert all(2 <= i < TOK.vocab_size for i in ids)
    assert TOK.decode(ids) == s
    assert TOK.decode(torch.tensor(ids, dtype=torch.long)) == s
    assert TOK.decode(TOK.encode(s, add_bos=True)) == s  # <bos> decodes to nothing


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1))
def test_round_trip_for_any_text_with_its_own_vocabulary(s: str) -> None:
    tok = CharTokenizer.from_text(s)
    assert tok.decode(tok.encode(s)) == s
    assert tok.vocab_size == len(set(s)) + 2


def test_reserved_ids_and_vocab_size() -> None:
    assert (TOK.bos_id, TOK.unk_id) == (0, 1)
    assert TOK.vocab_size == len(TOK.chars) + 2 == len(TOK)
    assert TOK.encode("ab", add_bos=True)[0] == TOK.bos_id
    assert len(TOK.encode("<bos>")) == 5  # the special names are ids, never characters of the text
    assert list(TOK.chars) == sorted(set(TEXT))  # deterministic ids: sorted by code point


def test_fixed_vocabulary_keeps_given_order() -> None:
    tok = CharTokenizer("ba\n")
    assert tok.encode("ab\n") == [3, 2, 4]


def test_unknown_character_strict_names_char_and_position() -> None:
    tok = CharTokenizer.from_text("hello world")
    with pytest.raises(ValueError, match=r"'é' \(U\+00E9\) at position 4 .*errors=\"replace\""):
        tok.encode("hellé wé")
    with pytest.raises(ValueError, match="errors must be"):
        tok.encode("hello", errors="ignore")


def test_unknown_character_replace_maps_to_unk() -> None:
    tok = CharTokenizer.from_text("hello world")
    ids = tok.encode("hé!", errors="replace")
    assert ids[1] == ids[2] == tok.unk_id
    assert tok.decode(ids) == "h\ufffd\ufffd"


UNK_LOOKALIKES = ["\ufffd", "\ue000", "\ue001", "?"]  # U+FFFD and the first fallbacks


@settings(max_examples=200, deadline=None)
@given(
    chars=st.sets(st.one_of(st.sampled_from(UNK_LOOKALIKES), st.characters()), min_size=1, max_size=40),
    data=st.data(),
)
def test_a_decoded_unknown_is_never_a_vocabulary_character(chars, data) -> None:
    tok = CharTokenizer(sorted(chars))
    assert tok.unk_char not in tok and len(tok.unk_char) == 1
    assert tok.unk_char == ("\ufffd" if "\ufffd" not in chars else tok.unk_char)
    ids = data.draw(st.lists(st.integers(1, tok.vocab_size - 1), max_size=30))  # any ids but <bos>
    text = tok.decode(ids)
    assert tok.encode(text, errors="replace") == ids  # <unk> stays <unk>, never turns into a real character
    if tok.unk_id in ids:
        with pytest.raises(ValueError, match="not in the vocabulary"):
            tok.encode(text)
    again = CharTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again == tok and again.unk_char == tok.unk_char and again.vocab_size == len(chars) + 2


def test_unknown_symbol_moves_off_a_vocabulary_replacement_character() -> None:
    tok = CharTokenizer.from_text("caf\ufffd")  # text once decoded with errors="replace" has U+FFFD
    ids = tok.encode("café", errors="replace")
    assert ids[-1] == tok.unk_id and tok.encode("caf\ufffd")[-1] != tok.unk_id
    assert tok.decode(ids) == "caf\ue000" != tok.decode(tok.encode("caf\ufffd"))
    assert CharTokenizer.from_text("caf\ufffd\ue000").unk_char == "\ue001"
    assert TOK.unk_char == CharTokenizer.unk_char == "\ufffd"  # the corpus has no U+FFFD: unchanged


def test_save_and_load_through_json() -> None:
    d = json.loads(json.dumps(TOK.to_dict()))
    tok = CharTokenizer.from_dict(d)
    assert tok == TOK
    assert tok.encode(TEXT[:1000]) == TOK.encode(TEXT[:1000])
    with pytest.raises(ValueError, match="not a saved CharTokenizer"):
        CharTokenizer.from_dict({"type": "BPE"})


@pytest.mark.parametrize(
    "chars, message",
    [("", "at least one"), ("aba", "duplicate"), (["ab"], "single characters")],
)
def test_bad_vocabularies(chars, message) -> None:
    with pytest.raises(ValueError, match=message):
        CharTokenizer(chars)


def test_bad_inputs_to_tokenizer() -> None:
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.from_text("")
    for bad in ([TOK.vocab_size], [-1], [1.5]):
        with pytest.raises(ValueError, match="not a valid id"):
            TOK.decode(bad)
    with pytest.raises(ValueError, match="1-D"):
        TOK.decode(torch.zeros(2, 3, dtype=torch.long))


# --- corpus ---------------------------------------------------------------------------------------


SHAKESPEARE = "First Citizen:\nBefore we proceed any further, hear me speak.\n"  # a stand-in of the right length
SHAKESPEARE = (SHAKESPEARE * (data_mod._SHAKESPEARE_CHARS // len(SHAKESPEARE) + 1))[: data_mod._SHAKESPEARE_CHARS]


@pytest.fixture(autouse=True)
def no_network(monkeypatch) -> None:
    """No test downloads anything: a test that wants a download serves it itself."""
    def offline(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(data_mod.urllib.request, "urlopen", offline)


def serve(monkeypatch, text: str) -> list:
    downloads = []

    def urlopen(*args, **kwargs):
        downloads.append(1)
        return io.BytesIO(text.encode())

    monkeypatch.setattr(data_mod.urllib.request, "urlopen", urlopen)
    return downloads


def test_python_docs_is_offline_deterministic_and_real() -> None:
    assert load_corpus() == TEXT  # same text every call (sorted topic order)
    assert len(TEXT) > 300_000
    assert "assert" in TEXT and "yield" in TEXT
    with pytest.raises(ValueError, match="unknown corpus"):
        load_corpus("no-such-corpus")


def test_prepare_corpus_encodes_and_splits() -> None:
    c = prepare_corpus()
    assert c.tokenizer == TOK
    assert c.train.dtype == torch.long and c.train.dim() == 1
    assert torch.equal(torch.cat([c.train, c.val]), torch.tensor(TOK.encode(TEXT)))
    assert len(c.val) == int(len(TEXT) * 0.1)
    assert (c.val != TOK.unk_id).all()
    assert len(c.sha256) == 64


def test_tiny_shakespeare_needs_explicit_download(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_corpus("tiny-shakespeare", cache_dir=tmp_path)


def test_tiny_shakespeare_without_network_gives_clear_error(tmp_path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Network is unreachable")

    monkeypatch.setattr(data_mod.urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError, match="no network"):
        load_corpus("tiny-shakespeare", download=True, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_tiny_shakespeare_download_is_checked_then_cached(tmp_path, monkeypatch) -> None:
    payload = {"text": "First Citizen:\n"}
    monkeypatch.setattr(data_mod.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(payload["text"].encode()))
    with pytest.raises(RuntimeError, match="truncated"):
        load_corpus("tiny-shakespeare", download=True, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing cached
    payload["text"] = "x" * data_mod._SHAKESPEARE_CHARS
    assert load_corpus("tiny-shakespeare", download=True, cache_dir=tmp_path) == payload["text"]
    monkeypatch.setattr(data_mod.urllib.request, "urlopen", None)  # now served from the cache only
    assert load_corpus("tiny-shakespeare", cache_dir=tmp_path) == payload["text"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-shakespeare.txt", "tiny-shakespeare.txt.sha256"]
    digest = hashlib.sha256(payload["text"].encode()).hexdigest()
    assert (tmp_path / "tiny-shakespeare.txt.sha256").read_text() == f"{digest}  tiny-shakespeare.txt\n"


def damage(path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "one character changed":
        path.write_bytes(raw[:1000] + (b"X" if raw[1000:1001] != b"X" else b"Y") + raw[1001:])
    elif how == "not UTF-8":
        path.write_bytes(raw[:1000] + b"\xff" + raw[1001:])
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated", "one character changed", "not UTF-8", "empty"])
def test_damaged_cache_is_detected_and_fetched_again(tmp_path, monkeypatch, how) -> None:
    downloads = serve(monkeypatch, SHAKESPEARE)
    assert load_corpus("tiny-shakespeare", download=True, cache_dir=tmp_path) == SHAKESPEARE
    cached = tmp_path / "tiny-shakespeare.txt"
    damage(cached, how)
    with pytest.raises(ValueError, match=rf"cached tiny-shakespeare at {cached} is damaged: .*Delete it"):
        load_corpus("tiny-shakespeare", cache_dir=tmp_path)
    with pytest.warns(UserWarning, match="damaged .* downloading it again"):
        assert load_corpus("tiny-shakespeare", download=True, cache_dir=tmp_path) == SHAKESPEARE
    assert len(downloads) == 2
    assert load_corpus("tiny-shakespeare", cache_dir=tmp_path) == SHAKESPEARE  # repaired, from the cache


def test_cache_of_an_older_version_without_a_record_is_checked_by_length(tmp_path) -> None:
    cached, record = tmp_path / "tiny-shakespeare.txt", tmp_path / "tiny-shakespeare.txt.sha256"
    cached.write_bytes(SHAKESPEARE.encode())
    assert load_corpus("tiny-shakespeare", cache_dir=tmp_path) == SHAKESPEARE
    assert record.read_text().split()[0] == hashlib.sha256(SHAKESPEARE.encode()).hexdigest()  # recorded now
    record.unlink()
    cached.write_bytes(SHAKESPEARE[:-1].encode())
    with pytest.raises(ValueError, match=r"has 1,115,393 characters, tiny-shakespeare has 1,115,394"):
        load_corpus("tiny-shakespeare", cache_dir=tmp_path)
    assert not record.exists()


def test_cache_write_is_atomic(tmp_path, monkeypatch) -> None:
    serve(monkeypatch, SHAKESPEARE)

    def rename_dies(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(data_mod.os, "replace", rename_dies)
    with pytest.raises(OSError, match="disk full"):
        load_corpus("tiny-shakespeare", download=True, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no half file, no temporary left behind


# --- split ----------------------------------------------------------------------------------------


def test_split_is_deterministic_contiguous_and_disjoint() -> None:
    ids = torch.arange(1000)
    train, val = split_train_val(ids, 0.1)
    train2, val2 = split_train_val(ids, 0.1)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    assert len(train) == 900 and len(val) == 100
    assert torch.equal(torch.cat([train, val]), ids)  # contiguous, nothing lost, no overlap
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert split_train_val("abcdefghij", 0.2) == ("abcdefgh", "ij")


@pytest.mark.parametrize(
    "data, fraction, message",
    [("", 0.1, "empty"), ("abc", 0.1, "too small"), ("abcdef", 0.0, r"\(0, 1\)"), ("abcdef", 1.0, r"\(0, 1\)")],
)
def test_split_bad_inputs(data, fraction, message) -> None:
    with pytest.raises(ValueError, match=message):
        split_train_val(data, fraction)


# --- batches --------------------------------------------------------------------------------------


def test_get_batch_shapes_shift_and_windows() -> None:
    data = torch.arange(500)
    x, y = get_batch(data, 8, 16, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:])  # y is x shifted by one
    assert torch.equal(y, x + 1)  # ... and the target of the last position is the next token
    starts = x[:, 0]
    assert torch.equal(x, starts[:, None] + torch.arange(16))  # contiguous windows of the data
    assert starts.min() >= 0 and (starts + 16).max() <= 499  # the target stays inside the data


def test_get_batch_is_reproducible_with_a_generator() -> None:
    data = torch.arange(10_000)
    a = get_batch(data, 4, 32, generator=torch.Generator().manual_seed(123))
    b = get_batch(data, 4, 32, generator=torch.Generator().manual_seed(123))
    c = get_batch(data, 4, 32, generator=torch.Generator().manual_seed(124))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_get_batch_smallest_data_and_device() -> None:
    data = torch.arange(17)  # exactly seq_len + 1 tokens: one possible window
    x, y = get_batch(data, 3, 16, device="cpu")
    assert torch.equal(x, torch.arange(16).expand(3, 16)) and x.device.type == "cpu"


@pytest.mark.parametrize(
    "data, batch_size, seq_len, message",
    [
        (torch.arange(100), 0, 8, "batch_size must be >= 1"),
        (torch.arange(100), 2, 0, "seq_len must be >= 1"),
        (torch.arange(100), 2, 100, r"seq_len=100 is too long for data of 100 tokens"),
        (torch.zeros(0, dtype=torch.long), 2, 8, "empty"),
        (torch.zeros(4, 100, dtype=torch.long), 2, 8, "1-D"),
        (torch.rand(100), 2, 8, "integer"),
    ],
)
def test_batching_bad_inputs(data, batch_size, seq_len, message) -> None:
    with pytest.raises(ValueError, match=message):
        get_batch(data, batch_size, seq_len)
    with pytest.raises(ValueError, match=message):
        next(sequential_batches(data, batch_size, seq_len))


def test_sequential_batches_cover_the_data_in_order() -> None:
    data = torch.arange(103)
    batches = list(sequential_batches(data, 4, 10))
    assert [len(x) for x, _ in batches] == [4, 4, 2]  # (103 - 1) // 10 = 10 windows
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    assert torch.equal(x.flatten(), torch.arange(100))  # non-overlapping, in order, no gaps
    assert torch.equal(y, x + 1)


def test_sequential_batches_max_windows_spread_evenly() -> None:
    data = torch.arange(1001)
    x = torch.cat([x for x, _ in sequential_batches(data, 3, 10, max_windows=5)])
    assert x[:, 0].tolist() == [0, 250, 500, 740, 990]  # first and last window included
    again = torch.cat([x for x, _ in sequential_batches(data, 3, 10, max_windows=5)])
    assert torch.equal(x, again)
    assert len(list(sequential_batches(data, 1000, 10, max_windows=10_000))[0][0]) == 100
    with pytest.raises(ValueError, match="max_windows"):
        next(sequential_batches(data, 3, 10, max_windows=0))
