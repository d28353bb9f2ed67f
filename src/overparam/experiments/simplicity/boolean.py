"""Boolean functions on the n-bit cube: the inputs, 128-bit keys, Lempel-Ziv complexity, entropy and
Hamming neighbours.

Order. Input i is the binary expansion of i, most significant bit first (x0 is the leading bit), as in
Valle-Perez et al.'s sampler (`"{0:07b}".format(i)`). A function is the string of its outputs in that
order; its key packs the string into 64-bit words, bit 63 of word 0 being the output on input 0, so that the
key written in hexadecimal reads as the string does.

Complexity. `lz_complexity` is Valle-Perez et al.'s `calc_KC` (guillefix/simpbias-tools, KC_LZ.py): the
number of phrases of the Lempel-Ziv (1976) exhaustive parsing (Kaspar and Schuster's count), averaged over
the string and its reverse and scaled by log2 of the length; a constant string gets log2 of the length.
"""

import math
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch


def inputs(*, n_bits: int) -> torch.Tensor:
    """Every input of the cube, [2**n_bits, n_bits] float 0/1, input i = i in binary, leading bit first."""
    index = torch.arange(2**n_bits)
    shifts = torch.arange(n_bits - 1, -1, -1)
    return ((index[:, None] >> shifts) & 1).float()


def words(length: int) -> int:
    """64-bit words in the key of a function on `length` inputs."""
    return -(-length // 64)


def pack(bits: torch.Tensor) -> torch.Tensor:
    """Bool [B, L] outputs -> int64 keys [B, ceil(L / 64)]; padding bits (past L) are 0. The top bit of a
    word lands in the int64 sign bit: a key is a bit pattern, not a number."""
    count, length = bits.shape
    padded = torch.zeros(count, 64 * words(length), dtype=torch.int64, device=bits.device)
    padded[:, :length] = bits.long()
    shifts = torch.arange(63, -1, -1, device=bits.device)
    return (padded.view(count, -1, 64) << shifts).sum(dim=-1)  # disjoint bits: the sum is the bitwise or


def unpack(keys: np.ndarray, *, length: int) -> np.ndarray:
    """int64 keys [M, W] -> uint8 outputs [M, length] (0/1), the inverse of `pack`."""
    as_bytes = np.ascontiguousarray(keys).astype(">i8").view(np.uint8).reshape(len(keys), -1)
    return np.unpackbits(as_bytes, axis=1)[:, :length]


def pack_array(bits: np.ndarray) -> np.ndarray:
    """`pack` for NumPy: 0/1 outputs [M, L] -> int64 keys [M, ceil(L / 64)]."""
    count, length = bits.shape
    padded = np.zeros((count, 64 * words(length)), dtype=np.uint8)
    padded[:, :length] = bits
    return np.packbits(padded, axis=1).view(">i8").astype(np.int64)


def strings(keys: np.ndarray, *, length: int) -> list[str]:
    """int64 keys [M, W] -> the functions as '0'/'1' strings of `length` characters."""
    rows = unpack(keys, length=length) + ord("0")
    return [row.tobytes().decode() for row in rows]


def hex_keys(keys: np.ndarray) -> list[str]:
    """int64 keys [M, W] -> hexadecimal, 16 digits a word, reading like the function's string."""
    unsigned = np.ascontiguousarray(keys).view(np.uint64)
    return ["".join(f"{word:016x}" for word in row) for row in unsigned.tolist()]


def lz_phrases(text: str) -> int:
    """Phrases of the Lempel-Ziv (1976) exhaustive parsing of `text`, counted as Kaspar and Schuster do
    (a final phrase that is a pure copy counts). Each phrase after the first copies the longest prefix of the
    rest that starts earlier in the text (the copy may overlap the phrase), plus one new symbol. A prefix
    that can be copied has copyable prefixes, so the longest is found by doubling, then bisection."""
    n = len(text)
    if n < 2:
        return n
    phrases, start = 1, 1
    while True:
        good, bad, step = 0, n - start + 1, 1  # a copy of `good` symbols works, of `bad` does not
        while good + step < bad:
            if text.find(text[start : start + good + step], 0, start + good + step - 1) == -1:
                bad = good + step
                break
            good, step = good + step, 2 * step
        while bad - good > 1:
            middle = (good + bad) // 2
            if text.find(text[start : start + middle], 0, start + middle - 1) == -1:
                bad = middle
            else:
                good = middle
        phrases += 1
        start += good + 1
        if start >= n:
            return phrases


def lz_complexity(text: str) -> float:
    """Valle-Perez et al.'s complexity of a binary string (bits): log2(n) for a constant string, else
    log2(n) * (phrases(text) + phrases(reversed text)) / 2."""
    n = len(text)
    if text.count(text[0]) == n:
        return math.log2(n)
    return math.log2(n) * (lz_phrases(text) + lz_phrases(text[::-1])) / 2


def complexities(texts: list[str], *, workers: int = 1, parallel_above: int = 100_000) -> np.ndarray:
    """`lz_complexity` of each string [M], float64, in `workers` processes when more than `parallel_above`
    distinct strings are to be parsed (millions take minutes on one core). A string and its complement have
    the same parsing, so each pair is parsed once."""
    swap = str.maketrans("01", "10")
    canonical = [min(text, text.translate(swap)) for text in texts]
    distinct = list(dict.fromkeys(canonical))
    if workers > 1 and len(distinct) > parallel_above:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            found = list(pool.map(lz_complexity, distinct, chunksize=10_000))
    else:
        found = [lz_complexity(text) for text in distinct]
    value = dict(zip(distinct, found, strict=True))
    return np.array([value[text] for text in canonical], dtype=np.float64)


def entropy(ones: np.ndarray, *, length: int) -> np.ndarray:
    """Binary entropy (bits, 0 to 1) of the fraction of ones in functions with `ones` [M] ones of `length`."""
    p = np.asarray(ones, dtype=float) / length
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = -p * np.log2(p) - (1 - p) * np.log2(1 - p)
    return np.nan_to_num(terms, nan=0.0)


def neighbours(*, n_bits: int) -> np.ndarray:
    """[2**n_bits, n_bits] int: entry (i, j) is input i with bit x_j flipped (Hamming distance 1)."""
    index = np.arange(2**n_bits)[:, None]
    return index ^ (1 << (n_bits - 1 - np.arange(n_bits)))[None, :]
