"""Data for the training chapter: a character tokenizer, an offline corpus, a split, and batches.

Everything here runs on a fresh machine with no network:

- :class:`CharTokenizer` maps each character to an id. Ids 0 and 1 are reserved for ``<bos>`` (the
  paper prepends one to every sequence) and ``<unk>`` (characters outside the vocabulary); they are ids,
  never characters, so a text containing the five characters ``<bos>`` is encoded as five characters.
- :func:`load_corpus` returns the Python language reference that ships inside every Python install
  (``pydoc_data.topics``, about 465 KB of English prose and code). A bigger corpus
  (``"tiny-shakespeare"``) is downloaded only when asked for and the network is there, then cached
  (written atomically, with its sha256 next to it, checked at every read).
- :func:`split_train_val` keeps the last 10% (by default) as validation: contiguous, so no validation
  window overlaps a training window, and deterministic.
- :func:`get_batch` draws random training windows with an explicit ``torch.Generator``;
  :func:`sequential_batches` walks fixed, non-overlapping validation windows.

Shapes: a corpus is a 1-D ``int64`` tensor ``(N,)``; a batch is ``x, y`` of shape ``(B, T)`` with
``y[:, t] == x[:, t + 1]`` within the window (``y`` is ``x`` shifted left by one token).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import operator
import os
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import torch

__all__ = [
    "CharTokenizer",
    "CharCorpus",
    "CORPORA",
    "load_corpus",
    "prepare_corpus",
    "split_train_val",
    "get_batch",
    "sequential_batches",
]


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------


class CharTokenizer:
    """A character-level tokenizer with two reserved ids.

    ``bos_id = 0`` and ``unk_id = 1``; characters get ids ``2 .. vocab_size - 1`` in the order given
    (:meth:`from_text` sorts them, so the same text always gives the same ids).

    Round trip: ``decode(encode(s)) == s`` for every string ``s`` made of vocabulary characters.
    ``decode`` drops ``<bos>`` and writes ``<unk>`` as :attr:`unk_char`, so text with unknown
    characters does not round-trip (that is the point of ``errors="strict"``, the default).

    :attr:`unk_char` is never a vocabulary character, so a decoded ``<unk>`` cannot pass for a real one:
    it is U+FFFD (the Unicode replacement character) unless the vocabulary has U+FFFD itself (text that was
    once decoded with errors="replace" does), and then the first code point from U+E000 (the Private Use
    Area, which no standard text uses) that the vocabulary lacks. Hence ``encode(decode(ids),
    errors="replace") == ids`` for every list of ids without ``<bos>``.
    """

    BOS = "<bos>"
    UNK = "<unk>"
    bos_id = 0
    unk_id = 1
    unk_char = "\ufffd"  # what decode() writes for <unk>, unless the vocabulary has it (see __init__)

    def __init__(self, chars: Iterable[str]):
        chars = tuple(chars)
        if not chars:
            raise ValueError("a CharTokenizer needs at least one character in its vocabulary")
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"vocabulary entries must be single characters, got {c!r}")
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"vocabulary has duplicate characters: {dup!r}")
        self.chars: tuple[str, ...] = chars
        self._stoi = {c: i + 2 for i, c in enumerate(chars)}
        # A decoded <unk> must not read as a character of the vocabulary (it would re-encode as that
        # character, silently): U+FFFD if free, else the first free code point of the Private Use Area.
        if self.unk_char in self._stoi:
            self.unk_char = next(chr(c) for c in itertools.count(0xE000) if chr(c) not in self._stoi)
        # id -> text; the reserved ids decode to "" (<bos>) and unk_char (<unk>).
        self._itos = ["", self.unk_char, *chars]

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The vocabulary of ``text``: its distinct characters, sorted by code point."""
        if not text:
            raise ValueError("cannot build a vocabulary from an empty text (empty corpus?)")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        """Number of ids, reserved ones included: ``len(chars) + 2``."""
        return len(self._itos)

    def __len__(self) -> int:
        return self.vocab_size

    def __contains__(self, char: str) -> bool:
        return char in self._stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, chars={''.join(self.chars)[:40]!r}...)"

    def encode(self, text: str, *, errors: str = "strict", add_bos: bool = False) -> list[int]:
        """Text -> list of ids (length ``len(text)``, plus one if ``add_bos``).

        errors="strict" raises ValueError naming the first unknown character and its position;
        errors="replace" maps unknown characters to ``unk_id``.
        """
        if errors not in ("strict", "replace"):
            raise ValueError(f'errors must be "strict" or "replace", got {errors!r}')
        stoi = self._stoi
        prefix = [self.bos_id] if add_bos else []
        if errors == "replace":
            unk = self.unk_id
            return prefix + [stoi.get(c, unk) for c in text]
        try:  # the fast path; only on failure do we look for where it failed
            return prefix + [stoi[c] for c in text]
        except KeyError:
            pos, char = next((i, c) for i, c in enumerate(text) if c not in stoi)
            raise ValueError(
                f"character {char!r} (U+{ord(char):04X}) at position {pos} is not in the vocabulary "
                f"({len(self.chars)} characters); pass errors=\"replace\" to map unknown characters "
                f"to <unk> (id {self.unk_id})"
            ) from None

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Ids (a list or a 1-D tensor) -> text. ``<bos>`` is dropped, ``<unk>`` becomes :attr:`unk_char`."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode takes a 1-D tensor of ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        itos, n = self._itos, len(self._itos)

        def invalid(i: object) -> bool:
            try:
                return not 0 <= operator.index(i) < n  # negative ids would index from the end
            except TypeError:
                return True

        bad = next((i for i in ids if invalid(i)), None)
        if bad is not None:
            raise ValueError(f"id {bad!r} is not a valid id (vocab_size={n})")
        return "".join([itos[i] for i in ids])

    def to_dict(self) -> dict:
        """A JSON- and ``torch.load(weights_only=True)``-safe description; inverse of :meth:`from_dict`."""
        return {"type": "CharTokenizer", "version": 1, "chars": list(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        if d.get("type") != "CharTokenizer" or d.get("version") != 1:
            raise ValueError(f"not a saved CharTokenizer (version 1): {dict(list(d.items())[:2])}")
        return cls(d["chars"])


# --------------------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------------------

_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
_SHAKESPEARE_CHARS = 1_115_394  # the well-known size; a truncated download is rejected

CORPORA = {
    "python-docs": "The Python language reference (pydoc_data.topics), shipped with Python; offline.",
    "tiny-shakespeare": "Karpathy's tiny Shakespeare (1.1 MB); downloaded once on request, then cached.",
}


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("RETNET_MINI_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "retnet_mini"


def _python_docs() -> str:
    # pydoc_data.topics maps a topic name ("assert", "with", ...) to its text. Sorted keys make the
    # order deterministic; the text itself changes with the Python version (3.11.7: 464,970 chars of
    # topics, 103 distinct characters), so a book should print len() and a hash next to its numbers.
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None] | bytes) -> None:
    """Write a file so that readers see the old one or the new one, never a torn file.

    ``write(f)`` (or the bytes given) goes to a temporary file next to ``path`` (same filesystem, so the
    rename is atomic), which is fsync'ed and then moved over ``path`` with ``os.replace``; a failure midway
    removes the temporary file and leaves ``path`` as it was. The corpus cache and the training checkpoints
    are written this way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, (bytes, bytearray)):
                f.write(write)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # Persist the rename itself (POSIX); not possible on every platform, and not needed for atomicity.
    with contextlib.suppress(OSError, AttributeError):
        dir_fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _sidecar(path: Path) -> Path:
    """Where the sha256 of a cached file is recorded when it is written (``sha256sum -c`` reads it)."""
    return path.with_name(path.name + ".sha256")


def _read_cached_shakespeare(path: Path) -> tuple[str | None, str | None]:
    """``(text, None)`` if the cached file checks out, else ``(None, what is wrong with it)``.

    Checked: the sha256 recorded next to it when it was cached (a file cached by an older version has no
    record: it gets one now if it passes the other checks), valid UTF-8, and the known length.
    """
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    side = _sidecar(path)
    recorded = side.read_text(encoding="utf-8").split()[:1] if side.exists() else None
    if recorded is not None and recorded != [digest]:
        return None, f"its sha256 ({digest[:16]}...) is not the one recorded in {side.name} when it was cached"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"it is not valid UTF-8 (byte {exc.start})"
    if len(text) != _SHAKESPEARE_CHARS:
        return None, f"it has {len(text):,} characters, tiny-shakespeare has {_SHAKESPEARE_CHARS:,}"
    if recorded is None:
        with contextlib.suppress(OSError):  # a read-only cache still reads; it just stays unrecorded
            write_atomically(side, f"{digest}  {path.name}\n".encode())
    return text, None


def _tiny_shakespeare(download: bool, cache_dir: str | os.PathLike | None, timeout: float) -> str:
    path = _cache_dir(cache_dir) / "tiny-shakespeare.txt"
    if path.exists():
        text, problem = _read_cached_shakespeare(path)
        if problem is None:
            return text
        if not download:
            raise ValueError(
                f"the cached tiny-shakespeare at {path} is damaged: {problem}. Delete it (and "
                f"{_sidecar(path).name} next to it), or call load_corpus('tiny-shakespeare', download=True) "
                "to download it again"
            )
        warnings.warn(f"the cached tiny-shakespeare at {path} is damaged ({problem}); downloading it again",
                      stacklevel=3)
    elif not download:
        raise FileNotFoundError(
            f"tiny-shakespeare is not cached at {path}; call load_corpus('tiny-shakespeare', "
            "download=True) with a network connection, or use the offline corpus 'python-docs'"
        )
    try:
        with urllib.request.urlopen(_SHAKESPEARE_URL, timeout=timeout) as response:
            raw = response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(
            f"could not download tiny-shakespeare from {_SHAKESPEARE_URL} (no network?): {exc}. "
            "The offline corpus 'python-docs' needs no download."
        ) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = ""  # reported as the wrong length just below
    if len(text) != _SHAKESPEARE_CHARS:
        raise RuntimeError(
            f"downloaded tiny-shakespeare has {len(text)} characters, expected {_SHAKESPEARE_CHARS}; "
            "not caching it (truncated download?)"
        )
    data = text.encode("utf-8")
    write_atomically(path, data)  # the text first: if we die before the record, the next read records it
    write_atomically(_sidecar(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())
    return text


def load_corpus(
    name: str = "python-docs",
    *,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
    timeout: float = 30.0,
) -> str:
    """Return a corpus as one string.

    ``"python-docs"`` (default) is always available offline: the topics of ``pydoc_data.topics`` joined
    in sorted key order with a newline between them. ``"tiny-shakespeare"`` is read from the cache
    (``cache_dir``, else ``$RETNET_MINI_CACHE``, else ``~/.cache/retnet_mini``); if it is not there it is
    downloaded only when ``download=True``, and a missing network gives a RuntimeError that says so.
    The cache is written atomically with its sha256 next to it (``tiny-shakespeare.txt.sha256``) and
    checked at every read; a damaged cached file is downloaded again with ``download=True``, else it is a
    ValueError naming the file.
    """
    if name == "python-docs":
        return _python_docs()
    if name == "tiny-shakespeare":
        return _tiny_shakespeare(download, cache_dir, timeout)
    raise ValueError(f"unknown corpus {name!r}; available: {sorted(CORPORA)}")


# --------------------------------------------------------------------------------------------------
# Split
# --------------------------------------------------------------------------------------------------

S = TypeVar("S", str, torch.Tensor)


def split_train_val(data: S, val_fraction: float = 0.1) -> tuple[S, S]:
    """Split a string or a 1-D tensor into ``(train, val)``: the last ``val_fraction`` is validation.

    Contiguous rather than shuffled so that no validation window shares text with a training window;
    ``int(len(data) * val_fraction)`` items go to validation. Both parts must be non-empty.
    For python-docs (topics in alphabetical order) validation is the last topics, from the middle of
    "typesmapping" to "yield" (Python 3.11): the same kind of text, unseen passages.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(data)
    if n == 0:
        raise ValueError("cannot split an empty corpus")
    n_val = int(n * val_fraction)
    if n_val == 0 or n_val == n:
        raise ValueError(
            f"a corpus of {n} items is too small to split with val_fraction={val_fraction} "
            f"(validation would have {n_val} items)"
        )
    return data[: n - n_val], data[n - n_val :]


@dataclass
class CharCorpus:
    """A corpus ready for training: the text, its tokenizer and the encoded train/val ids."""

    name: str
    text: str
    tokenizer: CharTokenizer
    train: torch.Tensor  # (N_train,) int64
    val: torch.Tensor  # (N_val,) int64

    @property
    def sha256(self) -> str:
        """Hash of the text, to print next to results (python-docs differs between Python versions)."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def prepare_corpus(
    name: str = "python-docs", val_fraction: float = 0.1, *, download: bool = False
) -> CharCorpus:
    """Load a corpus, build the tokenizer from the whole text, encode and split it.

    The vocabulary comes from the whole text (train and validation) so validation has no unknown
    characters; a character set is not information a model could overfit to.
    """
    text = load_corpus(name, download=download)
    tokenizer = CharTokenizer.from_text(text)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    train, val = split_train_val(ids, val_fraction)
    return CharCorpus(name, text, tokenizer, train, val)


# --------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------


def _check_batch_args(data: torch.Tensor, batch_size: int, seq_len: int) -> None:
    if not isinstance(data, torch.Tensor) or data.dim() != 1:
        raise ValueError("data must be a 1-D tensor of token ids (N,)")
    if data.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"data must hold integer token ids, got dtype {data.dtype}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if len(data) == 0:
        raise ValueError("data is empty (empty corpus?)")
    if len(data) < seq_len + 1:
        raise ValueError(
            f"seq_len={seq_len} is too long for data of {len(data)} tokens: a window needs "
            f"seq_len + 1 = {seq_len + 1} tokens (inputs plus the next-token targets)"
        )


def get_batch(
    data: torch.Tensor,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training windows: ``x, y`` of shape ``(batch_size, seq_len)``, int64, on ``device``.

    Each row starts at a uniform random offset in ``[0, N - seq_len - 1]``;
    ``y = data[s + 1 : s + seq_len + 1]`` is the next token of ``x = data[s : s + seq_len]``.
    The offsets come from ``generator`` (a CPU ``torch.Generator``), so the same generator state
    gives the same batch on any device. ``device=None`` keeps ``data``'s device.
    """
    _check_batch_args(data, batch_size, seq_len)
    starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(seq_len + 1)  # (B, T + 1)
    window = data[idx.to(data.device)].long()
    x, y = window[:, :-1], window[:, 1:]
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y


def sequential_batches(
    data: torch.Tensor,
    batch_size: int,
    seq_len: int,
    *,
    max_windows: int | None = None,
    device: str | torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed evaluation windows, in order: yields ``x, y`` of shape ``(b, seq_len)``, ``b <= batch_size``.

    The windows are the non-overlapping ``data[k*T : k*T + T]`` for ``k = 0 .. (N - 1) // T - 1``
    (only a tail shorter than one window is left out). With ``max_windows`` set and smaller than that,
    ``max_windows`` of them are taken evenly spread over the whole data, so a cheap evaluation still
    sees all of it. No randomness: the same data always gives the same batches.
    """
    _check_batch_args(data, batch_size, seq_len)
    n_windows = (len(data) - 1) // seq_len
    ks = torch.arange(n_windows)
    if max_windows is not None:
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        if max_windows < n_windows:
            ks = torch.linspace(0, n_windows - 1, max_windows).round().long()
    offsets = torch.arange(seq_len + 1)
    for i in range(0, len(ks), batch_size):
        idx = ks[i : i + batch_size, None] * seq_len + offsets  # (b, T + 1)
        window = data[idx.to(data.device)].long()
        x, y = window[:, :-1], window[:, 1:]
        if device is not None:
            x, y = x.to(device), y.to(device)
        yield x, y
