"""Which index a memory gets, from its size, its dimension and a RAM budget (as autofaiss does).

The rule, in order of preference; the first family whose resident size fits 85% of the budget
wins (the rest is headroom for queries, faiss's buffers and the Python process):

    n <= 100k                      Flat                   exact; a scan of 100k vectors takes ~ms
    target recall <= 0.98          IVF{nlist}[_HNSW32],PQ{d/2}x4fs,Refine(SQ8)
                                   (4-bit fast-scan codes of 2 dims each, then the best r*k
                                   candidates rescored from 8-bit codes: ScaNN's recipe)
    target recall <= 0.98          IVF{nlist}[_HNSW32],SQ8
    n <= 1M                        HNSW32,Flat            for higher targets (SQ8 tops out ~0.99)
    float vectors fit              IVF{nlist}[_HNSW32],Flat
    1 byte per dim fits            IVF{nlist}[_HNSW32],SQ8
    otherwise                      OPQ{m}_{D},IVF{nlist}[_HNSW32],PQ{m}
                                   with the largest m (bytes per vector) that fits; tuning adds an
                                   exact rescoring of r*k candidates from the key shards

Why fast-scan first (benchmarks/results/1e6x384-final.json and fmnist-real-fs.json, 2 cores,
quiet machine): at recall@100 ~0.955 it answered 1.32x ScaNN's queries/s on 10^6 clustered
384-d vectors and 1.42x on the demo's real 1280-d embeddings (ScaNN measured in the same run,
interpolated at equal recall), while IVF-SQ8 reached 0.50x and IVF-Flat and HNSW less. SQ8's
and the refine step's 8-bit rounding caps recall@100 near 0.99, so higher targets go to HNSW or
IVF-Flat.

The coarse quantizer is an HNSW graph over the centroids once nlist >= 4096: assigning each of
n vectors to its list by a flat scan of the centroids costs n * nlist * d flops, which at 10^7
vectors would take longer than everything else in the build.

nlist is the power of two at or below 4 sqrt(n) (faiss's advice is 4-16 sqrt(n); the lower end
keeps k-means training affordable on small machines), and the quantizers train on 50 vectors
per list (faiss warns below 39).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..config import RetrievalConfig
from ..errors import InputError
from ..sizes import parse_bytes

EXACT_MAX = 100_000
HNSW_MAX = 1_000_000
HNSW_M = 32
SQ8_MAX_TARGET = 0.98  # above this, 8-bit rounding costs too much recall@100
FILL = 0.85  # fraction of the budget the index may occupy
PQ_BYTES = (256, 192, 128, 96, 64, 48, 32, 24, 16, 8)
TRAIN_PER_LIST = 50
ID_BYTES = 8  # each IVF entry stores its int64 id


@dataclass(frozen=True)
class IndexChoice:
    factory: str  # faiss factory string
    family: str  # flat | hnsw | ivf-flat | ivf-sq8 | ivf-pq
    nlist: int  # inverted lists (0 for flat and hnsw)
    resident_bytes: int  # estimated RAM while searching
    train_rows: int  # vectors the quantizers train on (0: no training)
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def nlist_for(n: int) -> int:
    return max(16, 2 ** int(math.floor(math.log2(max(1.0, 4 * math.sqrt(n))))))


def choose_index(n: int, d: int, budget: int | str,
                 target_recall: float = RetrievalConfig.target_recall) -> IndexChoice:
    """The index family and factory string for n vectors of dimension d within ``budget``,
    for search tuned to ``target_recall``@k.

    Raises:
        ValueError: even the smallest product-quantized index does not fit the budget.
    """
    budget = parse_bytes(budget)
    room = FILL * budget
    gib = f"{budget / 2**30:.3g} GiB"
    flat = n * 4 * d
    if n <= EXACT_MAX and flat <= room:
        return IndexChoice("Flat", "flat", 0, flat, 0, f"{n:,} vectors: exact search is fast enough")
    nlist = nlist_for(n)
    train = min(n, TRAIN_PER_LIST * nlist)
    coarse = f"IVF{nlist}_HNSW{HNSW_M}" if nlist >= 4096 else f"IVF{nlist}"
    centroids = nlist * (d * 4 + (HNSW_M * 2 * 4 if nlist >= 4096 else 0))
    fast = n * (d // 4 + ID_BYTES + d) + centroids  # 4-bit codes of 2 dims + 8-bit refine codes
    if target_recall <= SQ8_MAX_TARGET and d % 2 == 0 and fast <= room:
        return IndexChoice(f"{coarse},PQ{d // 2}x4fs,Refine(SQ8)", "ivf-fs", nlist, fast, train,
                           f"4-bit fast-scan codes with 8-bit rescoring ({fast / 2**30:.2f} GiB) "
                           f"fit {gib}: ScaNN's recipe, the fastest scan per query")
    sq8 = n * (d + ID_BYTES) + centroids
    if target_recall <= SQ8_MAX_TARGET and sq8 <= room:
        return IndexChoice(f"{coarse},SQ8", "ivf-sq8", nlist, sq8, train,
                           f"8-bit codes ({sq8 / 2**30:.2f} GiB) fit {gib} and reach recall "
                           f"{target_recall}: the fastest scan per query")
    hnsw = n * (4 * d + HNSW_M * 2 * 4 * 1.1)  # vectors + level-0 links (+10% upper levels)
    if n <= HNSW_MAX and hnsw <= room:
        return IndexChoice(f"HNSW{HNSW_M},Flat", "hnsw", 0, int(hnsw), 0,
                           f"{n:,} vectors with HNSW links ({hnsw / 2**30:.2f} GiB) fit {gib}")
    ivf_flat = n * (4 * d + ID_BYTES) + centroids
    if ivf_flat <= room:
        return IndexChoice(f"{coarse},Flat", "ivf-flat", nlist, ivf_flat, train,
                           f"float vectors ({ivf_flat / 2**30:.2f} GiB) fit {gib}")
    if sq8 <= room:
        return IndexChoice(f"{coarse},SQ8", "ivf-sq8", nlist, sq8, train,
                           f"float vectors ({ivf_flat / 2**30:.2f} GiB) exceed {gib}; 8-bit "
                           f"codes ({sq8 / 2**30:.2f} GiB) fit")
    for m in PQ_BYTES:
        if m > d:
            continue
        dim_out = min(d - d % m, 4 * m)  # OPQ rotates and reduces to 4 dims per sub-quantizer
        size = n * (m + ID_BYTES) + nlist * dim_out * 4 + d * dim_out * 4
        if size <= room:
            return IndexChoice(f"OPQ{m}_{dim_out},{coarse},PQ{m}", "ivf-pq", nlist, size,
                               max(train, min(n, 256 * 64)),
                               f"8-bit codes ({sq8 / 2**30:.2f} GiB) exceed {gib}; PQ{m} "
                               f"({size / 2**30:.2f} GiB) fits")
    need = n * (8 + ID_BYTES) / FILL
    raise InputError(f"{n:,} vectors of dimension {d} do not fit {gib}, even as 8-byte PQ codes "
                     f"(needs about {need / 2**30:.2f} GiB); raise --budget or shard the memory")
