"""RFC 6962 / RFC 9162 Merkle tree hashing (SHA-256) for the tamper-evident audit log.

Pure functions and an in-memory append-only `Tree` over leaf hashes: roots of any
historical size, inclusion proofs (RFC 9162 2.1.3.1) and consistency proofs (2.1.4.1),
plus the verifier side (2.1.3.2, 2.1.4.2), which needs nothing but the proof, the sizes
and the roots. Callers hash their entries with `leaf_hash` before appending them.

The tree caches the hash of every complete, power-of-two aligned subtree:
``levels[k][i]`` is the hash of leaves ``[i * 2**k, (i + 1) * 2**k)``. Any range that the
RFC's recursive definitions ask for is one of those cached subtrees or splits into one
cached left half and a smaller right remainder, so a root or a proof for any size costs
O(log n) hashes, and an append costs O(1) amortised hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


class ProofError(ValueError):
    """A Merkle inclusion or consistency proof does not verify."""


def leaf_hash(data: bytes) -> bytes:
    """The RFC 6962 hash of one leaf: SHA-256(0x00 || data)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The RFC 6962 hash of an interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The largest power of two strictly less than `n` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes, got {value!r}")


def _check_count(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")


class Tree:
    """An append-only Merkle tree over leaf hashes, kept in memory."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        leaves = list(leaf_hashes)
        for index, leaf in enumerate(leaves):
            _check_hash(leaf, f"leaf hash {index}")
        self._levels: list[list[bytes]] = [leaves]
        below = leaves
        while len(below) >= 2:
            above = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            self._levels.append(above)
            below = above

    @property
    def size(self) -> int:
        """The number of leaves."""
        return len(self._levels[0])

    def append(self, leaf: bytes) -> int:
        """Append a leaf hash; returns its index."""
        _check_hash(leaf, "leaf hash")
        index = len(self._levels[0])
        self._levels[0].append(leaf)
        level = 0
        # Every complete subtree this leaf closes gets its hash cached one level up.
        while len(self._levels[level]) % 2 == 0:
            row = self._levels[level]
            if level + 1 == len(self._levels):
                self._levels.append([])
            self._levels[level + 1].append(node_hash(row[-2], row[-1]))
            level += 1
        return index

    def leaf(self, index: int) -> bytes:
        """The leaf hash at `index`."""
        _check_count(index, "index")
        if index >= self.size:
            raise ValueError(f"index {index} is out of range for a tree of size {self.size}")
        return self._levels[0][index]

    def _check_size(self, size: int, what: str = "size") -> None:
        _check_count(size, what)
        if size > self.size:
            raise ValueError(f"{what} {size} exceeds the tree size {self.size}")

    def _range_hash(self, start: int, end: int) -> bytes:
        """MTH of leaves [start, end), where `start` is a multiple of a power of two no
        smaller than the range (which every range in the RFC's recursions is)."""
        n = end - start
        if n & (n - 1) == 0:
            k = n.bit_length() - 1
            return self._levels[k][start >> k]
        split = _largest_power_of_two_below(n)
        return node_hash(
            self._range_hash(start, start + split), self._range_hash(start + split, end)
        )

    def root(self, size: int | None = None) -> bytes:
        """The root of the first `size` leaves (all of them by default)."""
        if size is None:
            size = self.size
        self._check_size(size)
        if size == 0:
            return EMPTY_ROOT
        return self._range_hash(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The audit path of leaf `index` in the tree of the first `size` leaves, in
        RFC 9162 2.1.3.1 order (from the leaf's sibling up to the root's child)."""
        self._check_size(size)
        _check_count(index, "index")
        if index >= size:
            raise ValueError(f"index {index} is out of range for a tree of size {size}")
        path: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            k = _largest_power_of_two_below(end - start)
            if index - start < k:
                path.append(self._range_hash(start + k, end))
                end = start + k
            else:
                path.append(self._range_hash(start, start + k))
                start += k
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """The proof that the tree of `old_size` leaves is a prefix of the tree of
        `new_size` leaves, in RFC 9162 2.1.4.1 order. Empty if the sizes are equal or
        `old_size` is 0."""
        self._check_size(new_size, "new_size")
        _check_count(old_size, "old_size")
        if old_size > new_size:
            raise ValueError(f"old_size {old_size} exceeds new_size {new_size}")
        proof: list[bytes] = []
        if old_size == 0 or old_size == new_size:
            return proof
        start, end, whole = 0, new_size, True
        m = old_size
        while m != end:
            k = _largest_power_of_two_below(end - start)
            if m - start <= k:
                proof.append(self._range_hash(start + k, end))
                end = start + k
            else:
                proof.append(self._range_hash(start, start + k))
                start += k
                whole = False
        if not whole:
            proof.append(self._range_hash(start, end))
        proof.reverse()
        return proof


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle root of a list of leaf hashes."""
    return Tree(leaf_hashes).root()


def _check_proof(proof: Sequence[bytes]) -> None:
    for position, item in enumerate(proof):
        if not isinstance(item, bytes) or len(item) != HASH_SIZE:
            raise ProofError(f"proof element {position} is not a {HASH_SIZE}-byte hash")


def _check_proof_count(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProofError(f"{what} must be a non-negative integer, got {value!r}")


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that `leaf` (a leaf hash) is at `index` in the tree of `size` leaves with
    `root` (RFC 9162 2.1.3.2). Raises ProofError otherwise."""
    _check_proof_count(index, "index")
    _check_proof_count(size, "size")
    if index >= size:
        raise ProofError(f"index {index} is out of range for a tree of size {size}")
    if not isinstance(leaf, bytes) or len(leaf) != HASH_SIZE:
        raise ProofError(f"leaf hash must be {HASH_SIZE} bytes")
    _check_proof(proof)
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError(
                f"inclusion proof is too long: {len(proof)} hashes for index {index} "
                f"in a tree of size {size}"
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(
            f"inclusion proof is too short: {len(proof)} hashes for index {index} "
            f"in a tree of size {size}"
        )
    if r != root:
        raise ProofError(
            f"inclusion proof for index {index} in a tree of size {size} does not lead "
            "to the expected root"
        )


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree of `old_size` leaves with `old_root` is a prefix of the tree
    of `new_size` leaves with `new_root` (RFC 9162 2.1.4.2). Raises ProofError otherwise.

    Equal sizes need an empty proof and equal roots. An empty old tree (whose root must
    be EMPTY_ROOT) is a prefix of every tree, with an empty proof."""
    _check_proof_count(old_size, "old_size")
    _check_proof_count(new_size, "new_size")
    if old_size > new_size:
        raise ProofError(f"old_size {old_size} exceeds new_size {new_size}")
    _check_proof(proof)
    if old_size == new_size:
        if proof:
            raise ProofError(
                f"consistency proof between equal sizes {old_size} must be empty, "
                f"got {len(proof)} hashes"
            )
        if old_root != new_root:
            raise ProofError(f"roots differ for the same size {old_size}")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError("the root of an empty tree must be EMPTY_ROOT")
        return
    if old_size == 0:
        if proof:
            raise ProofError(
                f"consistency proof from an empty tree must be empty, got {len(proof)} hashes"
            )
        if old_root != EMPTY_ROOT:
            raise ProofError("the root of an empty tree must be EMPTY_ROOT")
        return
    if not proof:
        raise ProofError(f"consistency proof from size {old_size} to {new_size} must not be empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(
                f"consistency proof from size {old_size} to {new_size} is too long "
                f"({len(proof)} hashes)"
            )
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(
            f"consistency proof from size {old_size} to {new_size} is too short "
            f"({len(proof)} hashes)"
        )
    if fr != old_root:
        raise ProofError(
            f"consistency proof from size {old_size} to {new_size} does not lead to the old root"
        )
    if sr != new_root:
        raise ProofError(
            f"consistency proof from size {old_size} to {new_size} does not lead to the new root"
        )
