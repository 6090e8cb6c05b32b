"""Learning byte-level BPE merges, deterministically, for the demo tokenizer.

Classic BPE over pre-tokenized chunks: start from single bytes, repeatedly merge the most frequent adjacent
pair (ties broken by the smaller token ids, so the result never depends on dict order), and record the merged
byte string as the next rank. tiktoken then applies merges by rank, which reproduces this segmentation.

Counting pairs from scratch after every merge would be quadratic; instead each chunk keeps its token list, a
pair -> chunks index says which chunks a merge touches, and a heap with lazy updates finds the best pair.
Only the chunks that contain the merged pair are recounted.

`train_bpe_reference` is the obvious slow version (recount everything each step), kept for tests.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict


def _pairs(tokens: list[int]) -> Counter:
    return Counter(zip(tokens, tokens[1:]))


def _merge_tokens(tokens: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    out, i, n = [], 0, len(tokens)
    while i < n:
        if i + 1 < n and tokens[i] == pair[0] and tokens[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(tokens[i])
            i += 1
    return out


def train_bpe(chunk_counts: dict[bytes, int], num_merges: int) -> list[bytes]:
    """Up to `num_merges` new tokens (byte strings) in rank order, learned from chunk frequencies.

    Stops early when every chunk is a single token. A merge whose bytes already exist as a token (reached
    through another pair) is applied but adds no new token.
    """
    vocab: list[bytes] = [bytes([b]) for b in range(256)]
    ids_by_bytes = {token: i for i, token in enumerate(vocab)}
    chunks = sorted(chunk_counts)  # fixed order: determinism does not rest on dict order
    words = [list(chunk) for chunk in chunks]
    counts = [chunk_counts[chunk] for chunk in chunks]

    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for w, tokens in enumerate(words):
        for pair in zip(tokens, tokens[1:]):
            pair_counts[pair] += counts[w]
            where[pair].add(w)
    # Max-heap by count, ties to the smaller pair. Counts only grow for pairs that contain the new token, so
    # only those are pushed; an entry whose count has since dropped is re-pushed when it surfaces.
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)

    new_tokens: list[bytes] = []
    while len(new_tokens) < num_merges and heap:
        neg_count, pair = heapq.heappop(heap)
        current = pair_counts.get(pair, 0)
        if current != -neg_count:
            if current > 0:
                heapq.heappush(heap, (-current, pair))
            continue
        merged = vocab[pair[0]] + vocab[pair[1]]
        new_id = ids_by_bytes.get(merged)
        if new_id is None:
            new_id = len(vocab)
            vocab.append(merged)
            ids_by_bytes[merged] = new_id
            new_tokens.append(merged)
        grown = set()
        for w in where.pop(pair, ()):
            old, c = words[w], counts[w]
            new = _merge_tokens(old, pair, new_id)
            old_pairs, new_pairs = list(zip(old, old[1:])), list(zip(new, new[1:]))
            for p in old_pairs:
                pair_counts[p] -= c
            for p in new_pairs:
                pair_counts[p] += c
                if new_id in p:
                    grown.add(p)
            for p in set(old_pairs).difference(new_pairs):
                if p != pair:
                    where[p].discard(w)
            for p in new_pairs:
                where[p].add(w)
            words[w] = new
        del pair_counts[pair]
        for p in grown:
            heapq.heappush(heap, (-pair_counts[p], p))
    return new_tokens


def train_bpe_reference(chunk_counts: dict[bytes, int], num_merges: int) -> list[bytes]:
    """Same result as `train_bpe`, recounting every pair of every chunk at each step (slow; for tests)."""
    vocab = [bytes([b]) for b in range(256)]
    ids_by_bytes = {token: i for i, token in enumerate(vocab)}
    chunks = sorted(chunk_counts)
    words = [list(chunk) for chunk in chunks]
    new_tokens: list[bytes] = []
    while len(new_tokens) < num_merges:
        pair_counts: Counter = Counter()
        for w, tokens in enumerate(words):
            for pair, k in _pairs(tokens).items():
                pair_counts[pair] += k * chunk_counts[chunks[w]]
        if not pair_counts:
            break
        pair = min(pair_counts, key=lambda p: (-pair_counts[p], p))
        merged = vocab[pair[0]] + vocab[pair[1]]
        new_id = ids_by_bytes.get(merged)
        if new_id is None:
            new_id = len(vocab)
            vocab.append(merged)
            ids_by_bytes[merged] = new_id
            new_tokens.append(merged)
        words = [_merge_tokens(tokens, pair, new_id) for tokens in words]
    return new_tokens
