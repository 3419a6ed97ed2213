"""Near-duplicate prompts across a dataset: MinHash signatures of word bigrams, LSH banding, clusters.

Per record batch, in the worker threads with the other derived columns (numpy over the UTF-8 bytes, no
Python loop over rows or words): each prompt's user text is split into ASCII-lower-cased words, its word
bigrams hashed to 32 bits, and its MinHash signature computed as datasketch's ``MinHash(num_perm=NUM_PERM,
seed=SEED, scheme="affine32")`` computes it from those hashes (``tests/test_contracts_v2_checks.py`` checks
it), then cut into the LSH bands that datasketch's ``MinHashLSH`` picks for the threshold (false negatives
weighted 0.8: every candidate is verified).

In dataset order the index only appends each distinct prompt's sketch (``NearDuplicateIndex.add``); at the
end (``finish``) each prompt joins the cluster of the most similar earlier prompt that first held one of its
bands, when the signatures' estimated Jaccard similarity is above the threshold. The state per distinct
prompt: 1 byte per permutation (b-bit minwise hashing, the low 8 bits of each minimum), 8 bytes per LSH
band, its id and its first SAMPLE_CHARS characters (~200 bytes for a short prompt).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_contracts.text_checks import utf8_rows

NUM_PERM = 64
SEED = 1
LSH_WEIGHTS = (0.2, 0.8)  # (false positive, false negative): candidates are verified, so favour recall
CLUSTERS_LISTED = 10
IDS_LISTED = 10
SAMPLE_CHARS = 160
SAMPLE_IDS = 5
_FIBONACCI_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, odd: word bigrams and LSH bands chain by it
_WORD_MULTIPLIER = np.uint64(0x100000001B3)  # FNV-1a's 64-bit prime
# byte -> itself lower-cased if it belongs to a word (ASCII letters and digits, any byte of a non-ASCII
# character), else 0
_WORD_BYTES = np.array(
    [c + 32 if 65 <= c <= 90 else c if (97 <= c <= 122 or 48 <= c <= 57 or c >= 128) else 0 for c in range(256)], np.uint8
)


@functools.cache
def permutations(num_perm: int = NUM_PERM, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters ``(a, b)``, each (num_perm,) uint32."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


@functools.cache
def lsh_bands(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's ``MinHashLSH`` picks for ``threshold``."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    return lsh.b, lsh.r


# MurmurHash3's finalizers (shift, multiplier, shift, multiplier, shift) by width, as datasketch's _fmix has them
_FMIX = {
    32: (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16)),
    64: (np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(33), np.uint64(0xC4CEB9FE1A85EC53), np.uint64(33)),
}


def fmix(values: np.ndarray, width: int = 32) -> np.ndarray:
    """MurmurHash3's finalizer: the pre-mix datasketch's affine32 scheme applies to every 32-bit hash (and,
    at 64 bits, what makes every bit of a shingle's hash reach the high 32 bits it keeps)."""
    shift1, multiplier1, shift2, multiplier2, shift3 = _FMIX[width]
    values = (values ^ (values >> shift1)) * multiplier1
    values = (values ^ (values >> shift2)) * multiplier2
    return values ^ (values >> shift3)


def shingle_hashes(texts: pa.Array, salts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's word bigrams (its one word, for a one-word row) as 32-bit hashes, and (rows + 1,) offsets.

    Words are runs of ASCII letters and digits and of non-ASCII characters, ASCII lower-cased: case,
    punctuation and spacing do not tell prompts apart. ``salts`` (rows,) uint64 are mixed into every
    hash of a row (its media items' digests: the same question about another image shares no shingle).
    Numpy over the UTF-8 bytes, a constant number of operations per word: its hash mixes its length, its
    first 8 and its last 8 bytes (words of up to 16 bytes are hashed whole; longer ones that agree in
    length and both ends collide, which only makes near-duplicates of what is nearly one already).
    """
    data, offsets = utf8_rows(texts)
    size = int(offsets[-1])
    data = np.concatenate([np.take(_WORD_BYTES, data[:size]), np.zeros(8, np.uint8)])  # 0: a separator; else lower-cased
    is_word = data != 0
    row_start = np.zeros(size + 1, bool)
    row_start[offsets[:-1]] = True  # a word never spans two rows
    first = is_word[:size] & (row_start[:size] | ~np.concatenate([[False], is_word[: size - 1]]))
    last = is_word[:size] & (row_start[1:] | ~is_word[1 : size + 1])
    starts, ends = np.flatnonzero(first), np.flatnonzero(last) + 1
    lengths = (ends - starts).astype(np.uint64)
    eight_bytes = np.ndarray((size + 1,), np.dtype("<u8"), data, 0, (1,))  # unaligned 8-byte reads at any position
    head = eight_bytes[starts] & (~np.uint64(0) >> (np.uint64(8) * (np.uint64(8) - np.minimum(lengths, np.uint64(8)))))
    tail = np.where(lengths < 8, np.uint64(0), eight_bytes[np.maximum(ends - 8, starts)])
    hashes = fmix(head ^ fmix(tail ^ lengths * _WORD_MULTIPLIER, 64), 64)
    rows = len(offsets) - 1
    row = np.repeat(np.arange(rows, dtype=np.int32), np.diff(offsets))[starts]  # ~3x a searchsorted's speed
    counts = np.bincount(row, minlength=rows)
    # each word with the next one of its row, or alone if it is its row's only word: in row order already
    next_hashes = np.append(hashes[1:], np.uint64(0))
    with_next = np.append(row[1:] == row[:-1], False)
    keep = with_next | (counts[row] == 1)
    shingles = np.where(with_next, hashes * _FIBONACCI_MULTIPLIER + next_hashes, hashes)[keep]
    shingle_row = row[keep]
    if salts is not None:
        shingles = fmix(shingles ^ salts[shingle_row], 64)
    shingle_offsets = np.concatenate([[0], np.cumsum(np.bincount(shingle_row, minlength=rows))]).astype(np.int64)
    return (shingles >> np.uint64(32)).astype(np.uint32), shingle_offsets


def signatures(hashes: np.ndarray, offsets: np.ndarray, num_perm: int = NUM_PERM, seed: int = SEED) -> np.ndarray:
    """(rows, num_perm) uint32 MinHash signatures of each row's shingle ``hashes`` (as datasketch's
    ``MinHash(scheme="affine32").update_batch``); a row without shingles keeps the empty value 2^32 - 1."""
    a, b = permutations(num_perm, seed)
    counts = np.diff(offsets)
    order = np.argsort(-counts, kind="stable")  # longest rows first: the rows with a j-th shingle are a prefix
    starts, counts = offsets[:-1][order], counts[order]
    mixed = fmix(hashes)
    minima = np.full((len(counts), num_perm), np.uint32(0xFFFFFFFF))
    buffer = np.empty_like(minima)  # one allocation: fresh arrays of this size cost more in page faults than math
    for position in range(int(counts[0]) if len(counts) else 0):
        rows = int(np.searchsorted(-counts, -position, side="left"))  # rows with more than `position` shingles
        permuted = buffer[:rows]
        np.multiply(mixed[starts[:rows] + position, None], a, out=permuted)
        np.add(permuted, b, out=permuted)
        np.minimum(minima[:rows], permuted, out=minima[:rows])
    result = np.empty_like(minima)
    result[order] = minima
    return result


@dataclass
class PromptSketches:
    """What the index keeps of a batch's prompts, computed beside the other derived columns (in threads)."""

    band_keys: np.ndarray  # (rows, bands) uint64: a hash of each LSH band of the signature
    low_bits: np.ndarray  # (rows, num_perm) uint8: each minimum's low 8 bits (b-bit minwise hashing)
    has_words: np.ndarray  # (rows,) bool: a prompt without words is never a near-duplicate


def sketch_prompts(texts: pa.Array, threshold: float, salts: np.ndarray | None = None) -> PromptSketches:
    """(rows,) prompt texts' MinHash signatures, cut into the LSH bands of ``threshold`` (``shingle_hashes``
    for ``salts``)."""
    hashes, offsets = shingle_hashes(texts, salts)
    minima = signatures(hashes, offsets)
    return PromptSketches(
        band_keys=band_keys(minima, *lsh_bands(threshold, minima.shape[1])),
        low_bits=minima.astype(np.uint8),  # the low 8 bits
        has_words=np.diff(offsets) > 0,
    )


def band_keys(minima: np.ndarray, bands: int, band_rows: int) -> np.ndarray:
    """(rows, bands) uint64: a polynomial hash (mod 2^64) of each LSH band of (rows, num_perm) uint32 ``minima``,
    computed a column of every band at a time."""
    columns = minima[:, : bands * band_rows].reshape(len(minima), bands, band_rows)
    keys = columns[:, :, 0].astype(np.uint64)
    for column in range(1, band_rows):
        keys *= _FIBONACCI_MULTIPLIER
        keys += columns[:, :, column]
    return keys


@dataclass
class Cluster:
    """Prompts that are near-duplicates of its first one (transitively), as the report lists them."""

    prompts: int  # distinct prompts (exact repeats are duplicate_prompts' finding, not counted here)
    ids: list[str]  # the rows of the first IDS_LISTED prompts, in dataset order
    sample: str  # the first prompt, cut to SAMPLE_CHARS

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "ids": self.ids, "sample": self.sample}


@dataclass
class NearDuplicates:
    """What ``NearDuplicateIndex.finish`` found over the dataset."""

    near_duplicates: int  # prompts in a cluster beyond its first one
    sample_ids: list[str]  # the first few of them, in dataset order
    clusters: list[Cluster]  # the largest CLUSTERS_LISTED
    cluster_count: int


class NearDuplicateIndex:
    """Near-duplicate prompts over a whole dataset: fed each distinct prompt's signature in dataset order,
    clustered once at the end (a sort per LSH band)."""

    def __init__(self, threshold: float, num_perm: int = NUM_PERM):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
            raise ValueError(f"near-duplicate similarity must be a number between 0 and 1 (exclusive), got {threshold!r}")
        self.threshold = float(threshold)
        self.bands, self.band_rows = lsh_bands(self.threshold, num_perm)
        self._keys: list[np.ndarray] = []  # per batch: (prompts, bands) uint64 LSH band hashes
        self._signatures: list[np.ndarray] = []  # per batch: (prompts, num_perm) uint8, the low bits of each minimum
        self._ids: list[pa.Array] = []
        self._samples: list[pa.Array] = []

    def add(self, sketches: PromptSketches, rows: np.ndarray, ids: pa.Array, texts: pa.Array) -> None:
        """Index ``rows`` of a batch (the first occurrences of prompts: exact repeats left out), in dataset
        order; ``sketches``, ``ids`` and ``texts`` are the whole batch's."""
        rows = rows[sketches.has_words[rows]]
        self._keys.append(sketches.band_keys[rows])
        self._signatures.append(sketches.low_bits[rows])
        taken = pa.array(rows, pa.int64())
        self._ids.append(ids.take(taken))
        self._samples.append(pc.utf8_slice_codeunits(pc.fill_null(texts.take(taken), ""), 0, SAMPLE_CHARS))

    def finish(self, listed: int = SAMPLE_IDS) -> NearDuplicates:
        """Each prompt joins the cluster of the most similar earlier prompt that shares an LSH band with it
        (the first to hold that band), when their estimated similarity is above the threshold."""
        keys = np.concatenate(self._keys) if self._keys else np.zeros((0, self.bands), np.uint64)
        count = len(keys)
        candidates = np.full((count, self.bands), -1, np.int64)
        for band, band_keys in enumerate(np.ascontiguousarray(keys.T) if count else []):
            order = np.argsort(band_keys)
            sorted_keys = band_keys[order]
            run_starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
            first_holder = np.repeat(np.minimum.reduceat(order, run_starts), np.diff(np.append(run_starts, count)))
            candidates[order, band] = np.where(first_holder < order, first_holder, -1)
        similarity = self._estimate(candidates)
        best = np.argmax(similarity, axis=1) if count else np.zeros(0, np.int64)
        linked = similarity[np.arange(count), best] > self.threshold
        parent = np.where(linked, candidates[np.arange(count), best], np.arange(count))
        while count and (parent[parent] != parent).any():  # pointer jumping: every prompt to its cluster's first
            parent = parent[parent]
        ids = pa.concat_arrays(self._ids) if self._ids else pa.array([], pa.string())
        samples = pa.concat_arrays(self._samples) if self._samples else pa.array([], pa.string())
        prompts = np.bincount(parent, minlength=count)
        roots = np.flatnonzero(prompts > 1)
        largest = roots[np.lexsort((roots, -prompts[roots]))][:CLUSTERS_LISTED]
        clusters = [
            Cluster(int(prompts[root]), ids.take(pa.array(np.flatnonzero(parent == root)[:IDS_LISTED])).to_pylist(),
                    samples[int(root)].as_py())
            for root in largest
        ]
        flagged = np.flatnonzero(linked)
        return NearDuplicates(len(flagged), ids.take(pa.array(flagged[:listed], pa.int64())).to_pylist(), clusters, len(roots))

    def _estimate(self, candidates: np.ndarray) -> np.ndarray:
        """(n, bands) estimated Jaccard similarity to each candidate (0 where there is none): the share of
        equal 8-bit minima, less the 1/256 chance that two different minima agree in their low bits."""
        stored = np.concatenate(self._signatures) if self._signatures else np.zeros((0, 0), np.uint8)
        estimate = np.zeros(candidates.shape)
        rows, bands = np.nonzero(candidates >= 0)
        if len(rows):
            equal = (stored[rows] == stored[candidates[rows, bands]]).mean(axis=1)
            estimate[rows, bands] = np.clip((equal - 1 / 256) / (1 - 1 / 256), 0.0, 1.0)
        return estimate
