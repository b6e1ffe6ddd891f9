"""RFC 6962 / RFC 9162 Merkle tree: published vectors, every proof up to 64 leaves through
the independent verifiers, tampering of every kind refused, historical roots, and a
100,000-leaf tree."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from consortium.trust.audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    ProofError,
    Tree,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

# The RFC 6962 test leaves and roots used by transparency-dev/merkle (testonly/constants.go).
LEAF_INPUTS = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
              "606162636465666768696a6b6c6d6e6f"]
]  # fmt: skip
ROOTS = [
    bytes.fromhex(h)
    for h in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]
LEAF_HASHES = [
    bytes.fromhex(h)
    for h in [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ]
]


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# Published proofs (transparency-dev/merkle testdata/*/happy-path.json), hex.
INCLUSION_VECTORS: list[tuple[int, int, list[str]]] = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]

CONSISTENCY_VECTORS: list[tuple[int, int, list[str]]] = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


def reference_root(leaves: list[bytes]) -> bytes:
    """MTH straight from RFC 9162 2.1.1, recursively, as an independent oracle."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(reference_root(leaves[:k]), reference_root(leaves[k:]))


def make_leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def flip(data: bytes, bit: int = 0) -> bytes:
    return bytes([data[0] ^ (1 << bit)]) + data[1:]


@pytest.fixture(scope="module")
def tree64() -> tuple[Tree, list[bytes]]:
    leaves = make_leaves(64)
    tree = Tree()
    for leaf in leaves:
        tree.append(leaf)
    return tree, leaves


def test_hash_primitives() -> None:
    assert HASH_SIZE == 32
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert (
        node_hash(b"l" * 32, b"r" * 32) == hashlib.sha256(b"\x01" + b"l" * 32 + b"r" * 32).digest()
    )
    assert [leaf_hash(d) for d in LEAF_INPUTS] == LEAF_HASHES


def test_published_roots() -> None:
    leaves = [leaf_hash(d) for d in LEAF_INPUTS]
    tree = Tree()
    assert tree.root() == ROOTS[0]
    for size in range(1, 9):
        tree.append(leaves[size - 1])
        assert tree.root() == ROOTS[size]
        assert root_of(leaves[:size]) == ROOTS[size]
    for size in range(9):
        assert tree.root(size) == ROOTS[size]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_published_inclusion_proofs(index: int, size: int, proof: list[str]) -> None:
    tree = Tree(LEAF_HASHES)
    expected = [h(p) for p in proof]
    assert tree.inclusion_proof(index, size) == expected
    verify_inclusion(index, size, LEAF_HASHES[index], expected, ROOTS[size])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_published_consistency_proofs(old: int, new: int, proof: list[str]) -> None:
    tree = Tree(LEAF_HASHES)
    expected = [h(p) for p in proof]
    assert tree.consistency_proof(old, new) == expected
    verify_consistency(old, new, expected, ROOTS[old], ROOTS[new])


def test_every_size_up_to_64_round_trips(tree64: tuple[Tree, list[bytes]]) -> None:
    tree, leaves = tree64
    roots = [reference_root(leaves[:n]) for n in range(65)]
    for size in range(65):
        assert tree.root(size) == roots[size] == root_of(leaves[:size])
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            verify_inclusion(index, size, leaves[index], proof, roots[size])
        for old in range(size + 1):
            proof = tree.consistency_proof(old, size)
            verify_consistency(old, size, proof, roots[old], roots[size])


def test_tampered_inclusion_proofs_fail(tree64: tuple[Tree, list[bytes]]) -> None:
    tree, leaves = tree64
    shape = Tree(leaves[:1] * 128)
    for size in range(1, 65):
        root = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            leaf = leaves[index]
            with pytest.raises(ProofError):
                verify_inclusion(index, size, flip(leaf), proof, root)
            with pytest.raises(ProofError):
                verify_inclusion(index, size, leaf, proof, flip(root))
            for position in range(len(proof)):
                bad = list(proof)
                bad[position] = flip(bad[position], 3)
                with pytest.raises(ProofError):
                    verify_inclusion(index, size, leaf, bad, root)
            with pytest.raises(ProofError):
                verify_inclusion(index, size, leaf, [*proof, root], root)
            if proof:
                with pytest.raises(ProofError):
                    verify_inclusion(index, size, leaf, proof[:-1], root)
                with pytest.raises(ProofError):
                    verify_inclusion(index, size, leaf, [EMPTY_ROOT, *proof], root)
            for other in range(size):
                if other != index:
                    with pytest.raises(ProofError):
                        verify_inclusion(other, size, leaf, proof, root)
            # A root does not commit to its size (the signed checkpoint does), so only a
            # size whose audit path has another length is bound to fail.
            for other_size in range(index + 1, 2 * size + 1):
                if len(shape.inclusion_proof(index, other_size)) != len(proof):
                    with pytest.raises(ProofError):
                        verify_inclusion(index, other_size, leaf, proof, root)


def test_tampered_consistency_proofs_fail(tree64: tuple[Tree, list[bytes]]) -> None:
    tree, leaves = tree64
    shape = Tree(leaves[:1] * 128)
    for new in range(1, 65):
        new_root = tree.root(new)
        for old in range(1, new):
            old_root = tree.root(old)
            proof = tree.consistency_proof(old, new)
            with pytest.raises(ProofError):
                verify_consistency(old, new, proof, flip(old_root), new_root)
            with pytest.raises(ProofError):
                verify_consistency(old, new, proof, old_root, flip(new_root))
            with pytest.raises(ProofError):
                verify_consistency(old, new, proof, new_root, old_root)
            for position in range(len(proof)):
                bad = list(proof)
                bad[position] = flip(bad[position], 5)
                with pytest.raises(ProofError):
                    verify_consistency(old, new, bad, old_root, new_root)
            with pytest.raises(ProofError):
                verify_consistency(old, new, [*proof, new_root], old_root, new_root)
            with pytest.raises(ProofError):
                verify_consistency(old, new, proof[:-1], old_root, new_root)
            with pytest.raises(ProofError):
                verify_consistency(old, new, [old_root, *proof], old_root, new_root)
            # As for inclusion, only sizes whose proofs have another length must fail.
            for other_old, other_new in [(o, new) for o in range(1, new)] + [
                (old, n) for n in range(old + 1, 2 * new + 1)
            ]:
                if (other_old, other_new) != (old, new) and len(
                    shape.consistency_proof(other_old, other_new)
                ) != len(proof):
                    with pytest.raises(ProofError):
                        verify_consistency(other_old, other_new, proof, old_root, new_root)


def test_consistency_edge_cases() -> None:
    tree = Tree(LEAF_HASHES)
    r1, r8 = tree.root(1), tree.root(8)
    verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    verify_consistency(0, 8, [], EMPTY_ROOT, r8)
    verify_consistency(8, 8, [], r8, r8)
    assert tree.consistency_proof(0, 8) == []
    assert tree.consistency_proof(8, 8) == []
    with pytest.raises(ProofError, match="must be empty"):
        verify_consistency(0, 8, [r1], EMPTY_ROOT, r8)
    with pytest.raises(ProofError, match="must be empty"):
        verify_consistency(8, 8, [r1], r8, r8)
    with pytest.raises(ProofError, match="roots differ"):
        verify_consistency(8, 8, [], r1, r8)
    with pytest.raises(ProofError, match="EMPTY_ROOT"):
        verify_consistency(0, 8, [], r1, r8)
    with pytest.raises(ProofError, match="EMPTY_ROOT"):
        verify_consistency(0, 0, [], r1, r1)
    with pytest.raises(ProofError, match="old_size 8 exceeds new_size 1"):
        verify_consistency(8, 1, [], r8, r1)
    with pytest.raises(ProofError, match="must not be empty"):
        verify_consistency(1, 8, [], r1, r8)
    with pytest.raises(ProofError, match="old_size must be a non-negative"):
        verify_consistency(-1, 8, [], r1, r8)
    with pytest.raises(ProofError, match="proof element 0"):
        verify_consistency(1, 8, [b"short"], r1, r8)


def test_inclusion_edge_cases() -> None:
    tree = Tree(LEAF_HASHES)
    root = tree.root()
    with pytest.raises(ProofError, match="index 8 is out of range"):
        verify_inclusion(8, 8, LEAF_HASHES[0], [], root)
    with pytest.raises(ProofError, match="index 0 is out of range for a tree of size 0"):
        verify_inclusion(0, 0, LEAF_HASHES[0], [], EMPTY_ROOT)
    with pytest.raises(ProofError, match="index must be a non-negative"):
        verify_inclusion(-1, 8, LEAF_HASHES[0], [], root)
    with pytest.raises(ProofError, match="too short"):
        verify_inclusion(0, 8, LEAF_HASHES[0], [], root)
    with pytest.raises(ProofError, match="too long"):
        verify_inclusion(0, 1, LEAF_HASHES[0], [root], LEAF_HASHES[0])
    with pytest.raises(ProofError, match="expected root"):
        verify_inclusion(0, 1, LEAF_HASHES[0], [], root)
    with pytest.raises(ProofError, match="proof element 1"):
        verify_inclusion(0, 8, LEAF_HASHES[0], [root, b"x" * 31, root], root)
    with pytest.raises(ProofError, match="leaf hash"):
        verify_inclusion(0, 1, b"", [], root)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: t.root(9), "size 9 exceeds the tree size 8"),
        (lambda t: t.root(-1), "size must be a non-negative integer, got -1"),
        (lambda t: t.leaf(8), "index 8 is out of range"),
        (lambda t: t.leaf(-1), "index must be a non-negative integer, got -1"),
        (lambda t: t.inclusion_proof(3, 3), "index 3 is out of range for a tree of size 3"),
        (lambda t: t.inclusion_proof(0, 9), "size 9 exceeds the tree size 8"),
        (lambda t: t.inclusion_proof(-2, 4), "index must be a non-negative integer, got -2"),
        (lambda t: t.consistency_proof(5, 4), "old_size 5 exceeds new_size 4"),
        (lambda t: t.consistency_proof(1, 9), "new_size 9 exceeds the tree size 8"),
        (lambda t: t.consistency_proof(-1, 4), "old_size must be a non-negative integer"),
        (lambda t: t.append(b"short"), "leaf hash must be 32 bytes"),
    ],
)
def test_tree_rejects_bad_arguments(call: Callable[[Tree], object], message: str) -> None:
    tree = Tree(LEAF_HASHES)
    with pytest.raises(ValueError, match=message):
        call(tree)


def test_tree_rejects_bad_leaves() -> None:
    with pytest.raises(ValueError, match="leaf hash 1"):
        Tree([LEAF_HASHES[0], b"x"])


def test_append_returns_indices_and_leaves() -> None:
    tree = Tree()
    assert tree.size == 0
    for index, leaf in enumerate(LEAF_HASHES):
        assert tree.append(leaf) == index
        assert tree.leaf(index) == leaf
    assert tree.size == 8
    assert Tree(LEAF_HASHES).root() == tree.root()


def test_historical_roots_after_growth() -> None:
    leaves = make_leaves(300)
    tree = Tree(leaves[:37])
    for leaf in leaves[37:]:
        tree.append(leaf)
    for size in [0, 1, 2, 3, 37, 64, 65, 127, 128, 129, 255, 256, 257, 299, 300]:
        assert tree.root(size) == reference_root(leaves[:size])


def test_hundred_thousand_leaves() -> None:
    n = 100_000
    leaves = make_leaves(n)
    tree = Tree(leaves)
    appended = Tree(leaves[:50_000])
    for leaf in leaves[50_000:]:
        appended.append(leaf)
    assert tree.size == appended.size == n
    root = tree.root()
    assert appended.root() == root
    # Split the root by hand at the largest power of two: both halves from the oracle.
    k = 65_536
    left = Tree(leaves[:k]).root()
    right = reference_root(leaves[k:])
    assert root == node_hash(left, right)
    for index in (0, 1, 65_535, 65_536, 99_999):
        verify_inclusion(index, n, leaves[index], tree.inclusion_proof(index, n), root)
    for old in (1, 12_345, 65_536, 99_999):
        proof = appended.consistency_proof(old, n)
        verify_consistency(old, n, proof, tree.root(old), root)
    old_size = 77_777
    assert tree.root(old_size) == Tree(leaves[:old_size]).root()
    verify_inclusion(5, old_size, leaves[5], tree.inclusion_proof(5, old_size), tree.root(old_size))
