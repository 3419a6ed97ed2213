"""Per-row text measurements for the dataset-level checks: pair similarity, text damage, label sanity.

Vectorised over a record batch (numpy over Arrow's buffers, RE2 and Arrow's JSON reader: no Python
loop over rows), so they cost a fraction of a second per 100k rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

# Mojibake: UTF-8 decoded as Latin-1/cp1252 ("é" -> "Ã©", "’" -> "â€™", NBSP -> "Â\xa0", "😀" -> "ðŸ˜€",
# a byte-order mark -> "ï»¿"), and U+FFFD, what a decoder leaves where bytes were not valid UTF-8.
# "Ã"/"Â" followed by a continuation byte's character (U+0080-U+00BF, or cp1252's 0x80-0x9F) hardly
# occurs in real text; "â€" and "ðŸ" never do.
MOJIBAKE = "\ufffd|[ÃÂ][\u0080-\u00bf€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ]|â€|ðŸ|ï»¿"

# Each side of a pair contributes about this many sampled trigrams to the similarity, however long.
SIMILARITY_SAMPLE = 64
# Knuth's multiplicative hash of a trigram's three bytes, shifted left by 8 to drop the word's fourth byte:
# (word << 8) * 0x9E3779B1 = word * 0x3779B100 mod 2^32. Its high bits pick the sampled trigrams.
_HASH_MULTIPLIER = np.uint32(0x3779B100)

# Meta fields the label checks read (see align_core/templates: UltraFeedback, PKUSafeRLHF).
LABEL_FIELDS = pa.schema(
    [
        ("score_chosen", pa.float64()),
        ("score_rejected", pa.float64()),
        ("chosen_by", pa.string()),
        ("is_chosen_safe", pa.bool_()),
        ("is_rejected_safe", pa.bool_()),
    ]
)
SAFER_CRITERION = "safer_response_id"  # PKUSafeRLHF's meta chosen_by with template option preference=safer


def damaged_parts(part_texts: pa.Array) -> np.ndarray:
    """(P,) True for a text part holding mojibake or U+FFFD replacement characters."""
    damaged = np.zeros(len(part_texts), bool)
    # Only non-ASCII text can be damaged so; the ASCII test is ~6x cheaper than the regex.
    candidates = np.flatnonzero(~pc.fill_null(pc.string_is_ascii(part_texts), True).to_numpy(zero_copy_only=False))
    if len(candidates):
        found = pc.match_substring_regex(part_texts.take(pa.array(candidates)), MOJIBAKE)
        damaged[candidates] = pc.fill_null(found, False).to_numpy(zero_copy_only=False)
    return damaged


def trigram_similarity(left: pa.Array, right: pa.Array) -> np.ndarray:
    """(rows,) Jaccard similarity of the sets of character trigrams of ``left[i]`` and ``right[i]``.

    Trigrams are taken over the UTF-8 bytes (the characters themselves for ASCII text). A pair whose
    longer side has more than ``SIMILARITY_SAMPLE`` bytes is compared on the trigrams whose hash falls
    in a 1-in-m sample (m a power of two, the same for both sides of the pair): Broder's estimator of
    the Jaccard similarity (the one MinHash-style deduplication uses): exactly 1 for identical texts,
    with a standard error of about 0.05 elsewhere (it bounds the cost: ~0.9 s per 200k Alpaca-length
    pairs on one core). Shorter pairs are compared on all their trigrams. A pair with no
    trigram on either side scores 0.
    """
    return utf8_trigram_similarity(utf8_rows(left), utf8_rows(right))


def utf8_trigram_similarity(left: tuple[np.ndarray, np.ndarray], right: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``trigram_similarity`` of rows given as ``utf8_rows`` (bytes, (rows + 1,) offsets)."""
    (left_bytes, left_offsets), (right_bytes, right_offsets) = left, right
    longest = np.maximum(np.diff(left_offsets), np.diff(right_offsets))
    # the sampling stride m = 2^k: the smallest with longest / m <= SIMILARITY_SAMPLE; keep hashes <= 2^(32-k) - 1
    stride_bits = np.ceil(np.log2(np.maximum(longest, 1) / SIMILARITY_SAMPLE)).clip(0, 31).astype(np.uint32)
    hash_limits = np.right_shift(np.uint32(0xFFFFFFFF), stride_bits)
    left_set = _trigram_set(left_bytes, left_offsets, hash_limits)
    right_set = _trigram_set(right_bytes, right_offsets, hash_limits)
    # both sets are sorted and distinct: a stable (merge) sort of the two runs puts shared keys side by side
    both = np.sort(np.concatenate([left_set, right_set]), kind="stable")
    shared = np.bincount((both[1:][both[1:] == both[:-1]] >> np.uint64(24)).astype(np.int64), minlength=len(longest))
    sizes = np.bincount((both >> np.uint64(24)).astype(np.int64), minlength=len(longest))
    union = sizes - shared
    return np.divide(shared, union, out=np.zeros(len(longest)), where=union > 0)


def utf8_rows(texts: pa.Array, row_starts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of text as their UTF-8 bytes back to back (padded by 3 zero bytes) and (rows + 1,) offsets.

    Without ``row_starts`` each string is a row; with it, row i is strings ``[row_starts[i], row_starts[i+1])``
    run together (a conversation's text parts: Arrow stores them back to back, so nothing is copied but the
    padding). Null strings are empty.
    """
    if texts.null_count:  # a null's offsets may span bytes (media placeholders carry none): make them empty
        texts = pc.fill_null(texts, "")
    offset_type = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    offsets = np.frombuffer(texts.buffers()[1], offset_type)[texts.offset : texts.offset + len(texts) + 1].astype(np.int64)
    if row_starts is not None:
        offsets = offsets[row_starts]
    data = np.frombuffer(texts.buffers()[2] or b"", np.uint8)[offsets[0] : offsets[-1]]
    return np.concatenate([data, np.zeros(3, np.uint8)]), offsets - offsets[0]


def _trigram_set(data: np.ndarray, offsets: np.ndarray, hash_limits: np.ndarray) -> np.ndarray:
    """The distinct sampled trigrams of every row, sorted: uint64 keys ``row << 24 | trigram's 3 bytes``."""
    # Four bytes at each position as one little-endian word, through an unaligned view.
    words = np.ndarray((len(data) - 3,), np.dtype("<u4"), data, 0, (1,))
    hashes = words * _HASH_MULTIPLIER
    lengths = np.diff(offsets)
    keep = hashes <= np.repeat(hash_limits, lengths)
    ends = offsets[1:][lengths > 0]  # a trigram starting in a row's last two bytes would run into the next row
    keep[ends - 1] = False
    keep[np.maximum(ends - 2, 0)] = False  # for a 1-byte row this is the previous row's last byte: dropped anyway
    kept = np.flatnonzero(keep)
    row_keys = np.repeat(np.arange(len(lengths), dtype=np.uint64) << np.uint64(24), lengths)  # ~2x a searchsorted's speed
    keys = np.sort(row_keys[kept] | (words[kept] & np.uint32(0xFFFFFF)))
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys


def preference_labels(meta: pa.Array) -> dict[str, pa.Array]:
    """(rows,) ``score_margin`` (chosen minus rejected score) and ``safety_label_conflict`` (chosen by
    safety, yet labelled unsafe while the rejected answer is labelled safe), null where meta lacks them."""
    fields = _label_fields(meta)
    chosen_by_safety = pc.fill_null(pc.equal(fields["chosen_by"], SAFER_CRITERION), False)
    conflict = pc.and_(pc.invert(fields["is_chosen_safe"]), fields["is_rejected_safe"])  # null if a label is missing
    return {
        "score_margin": pc.subtract(fields["score_chosen"], fields["score_rejected"]),
        "safety_label_conflict": pc.if_else(chosen_by_safety, conflict, pa.scalar(None, pa.bool_())),
    }


def _label_fields(meta: pa.Array) -> dict[str, pa.Array]:
    """``LABEL_FIELDS`` read from each row's meta JSON with Arrow's JSON reader; all null when no row has one."""
    meta = pc.if_else(pc.equal(pc.fill_null(meta, ""), ""), "{}", meta)  # one JSON object per line, in row order
    if not len(meta) or not pc.any(pc.match_substring_regex(meta, '"(?:score_chosen|chosen_by)"')).as_py():
        return {field.name: pa.nulls(len(meta), field.type) for field in LABEL_FIELDS}
    lines = pc.binary_join(pa.LargeListArray.from_arrays(pa.array([0, len(meta)], pa.int64()), meta), "\n")
    table = pa_json.read_json(
        pa.BufferReader(lines[0].as_buffer()),
        read_options=pa_json.ReadOptions(use_threads=False, block_size=1 << 26),
        parse_options=pa_json.ParseOptions(explicit_schema=LABEL_FIELDS, unexpected_field_behavior="ignore"),
    )
    if table.num_rows != len(meta):
        raise ValueError(f"meta: {len(meta)} rows gave {table.num_rows} JSON objects; each row's meta must be one object")
    return {field.name: table.column(field.name).combine_chunks() for field in LABEL_FIELDS}


# Letters of the scripts the script check knows, by Unicode block (the letter blocks of each script; digits,
# punctuation, symbols and emoji belong to none). Names as Unicode's script property (RE2's \p{...}).
SCRIPT_RANGES = [
    ("Latin", 0x41, 0x5A), ("Latin", 0x61, 0x7A), ("Latin", 0xAA, 0xAA), ("Latin", 0xBA, 0xBA),
    ("Latin", 0xC0, 0xD6), ("Latin", 0xD8, 0xF6), ("Latin", 0xF8, 0x24F), ("Latin", 0x1E00, 0x1EFF),
    ("Latin", 0x2C60, 0x2C7F), ("Latin", 0xA720, 0xA7FF), ("Latin", 0xFF21, 0xFF3A), ("Latin", 0xFF41, 0xFF5A),
    ("Greek", 0x370, 0x3FF), ("Greek", 0x1F00, 0x1FFF),
    ("Cyrillic", 0x400, 0x52F), ("Cyrillic", 0x2DE0, 0x2DFF), ("Cyrillic", 0xA640, 0xA69F),
    ("Armenian", 0x530, 0x58F), ("Hebrew", 0x590, 0x5FF), ("Hebrew", 0xFB1D, 0xFB4F),
    ("Arabic", 0x600, 0x6FF), ("Arabic", 0x750, 0x77F), ("Arabic", 0x8A0, 0x8FF), ("Arabic", 0xFB50, 0xFDFF),
    ("Arabic", 0xFE70, 0xFEFF),
    ("Devanagari", 0x900, 0x97F), ("Bengali", 0x980, 0x9FF), ("Gurmukhi", 0xA00, 0xA7F), ("Gujarati", 0xA80, 0xAFF),
    ("Oriya", 0xB00, 0xB7F), ("Tamil", 0xB80, 0xBFF), ("Telugu", 0xC00, 0xC7F), ("Kannada", 0xC80, 0xCFF),
    ("Malayalam", 0xD00, 0xD7F), ("Sinhala", 0xD80, 0xDFF), ("Thai", 0xE00, 0xE7F), ("Lao", 0xE80, 0xEFF),
    ("Tibetan", 0xF00, 0xFFF), ("Myanmar", 0x1000, 0x109F), ("Georgian", 0x10A0, 0x10FF),
    ("Hangul", 0x1100, 0x11FF), ("Hangul", 0x3130, 0x318F), ("Hangul", 0xAC00, 0xD7AF),
    ("Ethiopic", 0x1200, 0x137F), ("Khmer", 0x1780, 0x17FF),
    ("Hiragana", 0x3040, 0x309F), ("Katakana", 0x30A0, 0x30FF), ("Katakana", 0x31F0, 0x31FF), ("Katakana", 0xFF66, 0xFF9F),
    ("Han", 0x3400, 0x4DBF), ("Han", 0x4E00, 0x9FFF), ("Han", 0xF900, 0xFAFF), ("Han", 0x20000, 0x2FA1F),
]
SCRIPTS = tuple(dict.fromkeys(name for name, _, _ in SCRIPT_RANGES))
_RANGE_STARTS = np.array([start for _, start, _ in sorted(SCRIPT_RANGES, key=lambda r: r[1])], np.int64)
_RANGE_ENDS = np.array([end for _, _, end in sorted(SCRIPT_RANGES, key=lambda r: r[1])], np.int64)
_RANGE_SCRIPTS = np.array([SCRIPTS.index(name) for name, _, _ in sorted(SCRIPT_RANGES, key=lambda r: r[1])], np.int64)


def script_letters(columns: list[tuple[pa.Array, np.ndarray]], rows: int) -> np.ndarray:
    """(rows, len(SCRIPTS)) letters of each script in each row's text, from ``columns``: each conversation
    column's (P,) text parts and (P,) rows they belong to.

    A row whose text is all ASCII can hold Latin letters only: it counts 1 if it has any (RE2 finds the
    first); a row with any non-ASCII text is decoded from UTF-8 with numpy and counted letter by letter.
    """
    latin = SCRIPTS.index("Latin")
    counts = np.zeros((rows, len(SCRIPTS)), np.int64)
    decode = np.zeros(rows, bool)
    for part_texts, part_row in columns:
        ascii_parts = pc.fill_null(pc.string_is_ascii(part_texts), True).to_numpy(zero_copy_only=False)
        decode[part_row[~ascii_parts]] = True
        has_letter = pc.fill_null(pc.match_substring_regex(part_texts, "[A-Za-z]"), False).to_numpy(zero_copy_only=False)
        counts[part_row[ascii_parts & has_letter], latin] = 1
    counts[decode] = 0
    for part_texts, part_row in columns:
        parts = np.flatnonzero(decode[part_row])
        if not len(parts):
            continue
        data, offsets = utf8_rows(part_texts.take(pa.array(parts)))
        code_points = _code_points(data, offsets[-1])
        block = np.searchsorted(_RANGE_STARTS, code_points[:, 1], side="right") - 1
        letter = (block >= 0) & (code_points[:, 1] <= _RANGE_ENDS[np.maximum(block, 0)])
        char_row = part_row[parts][np.searchsorted(offsets, code_points[letter, 0], side="right") - 1]
        flat = np.bincount(char_row * len(SCRIPTS) + _RANGE_SCRIPTS[block[letter]], minlength=rows * len(SCRIPTS))
        counts += flat.reshape(rows, len(SCRIPTS))
    return counts


def _code_points(data: np.ndarray, size: int) -> np.ndarray:
    """(characters, 2): each character's byte position and code point, decoded from UTF-8 ``data`` (padded
    by 3 bytes, as ``utf8_rows`` gives it)."""
    leads = np.flatnonzero((data[:size] & 0xC0) != 0x80)
    b0, b1, b2, b3 = (data[leads + shift].astype(np.int64) & (0xFF if shift == 0 else 0x3F) for shift in range(4))
    code_points = np.where(
        b0 < 0x80,
        b0,
        np.where(
            b0 < 0xE0,
            (b0 & 0x1F) << 6 | b1,
            np.where(b0 < 0xF0, (b0 & 0x0F) << 12 | b1 << 6 | b2, (b0 & 0x07) << 18 | b1 << 12 | b2 << 6 | b3),
        ),
    )
    return np.stack([leads, code_points], axis=1)


def dominant_script(letters: np.ndarray) -> pa.Array:
    """(rows,) the script holding most of a row's letters (``script_letters`` summed over its columns);
    null for a row without letters."""
    names = pa.array(SCRIPTS, pa.string()).take(pa.array(np.argmax(letters, axis=1)))
    return pc.if_else(pa.array(letters.sum(axis=1) > 0), names, pa.scalar(None, pa.string()))
