"""The masked CRC-32C (Castagnoli) that frames every TensorBoard event record, computed with NumPy.

TensorBoard's own `masked_crc32c` goes byte by byte in Python (about 0.2 µs a byte): 5 ms for a confusion
image's record, as much again for a checkpoint's PR curves. Here the record is cut into equal lanes
whose CRCs are computed side by side, one byte of every lane per NumPy step, then chained: a CRC is linear,
so the register after lane i+1 is that lane's CRC from zero, xor the register after lane i carried through
as many zero bytes (four 256-entry tables per lane length). About sqrt(8 n) lanes balance the NumPy steps
(one per lane byte) against the chaining (one Python step per lane): 0.7 ms for 28 KB, against 5 to 6 ms.
The bytes past the last whole lane, and records too short to gain, go byte by byte.
"""

from __future__ import annotations

import functools
import math

import numpy as np

POLYNOMIAL = 0x82F63B78  # Castagnoli's, reflected
MIN_LANE_BYTES = 8  # shorter lanes (records under about 512 bytes) go byte by byte: they would not pay


def _table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(POLYNOMIAL), table >> 1).astype(np.uint32)
    return table


TABLE = _table()
TABLE_LIST = TABLE.tolist()


@functools.lru_cache(maxsize=64)
def _through_zeros(count: int) -> tuple[list[int], ...]:
    """The register after `count` zero bytes, as four tables: one per byte of the register before them."""
    registers = np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32))[:, None]
    for _ in range(count):
        registers = TABLE[registers & 0xFF] ^ (registers >> 8)
    return tuple(row.tolist() for row in registers)


def crc32c(data: bytes) -> int:
    """CRC-32C of `data` (initial register and final xor all ones)."""
    register = 0xFFFFFFFF
    count = max(math.isqrt(8 * len(data)), 1)
    lane_bytes = len(data) // count
    if lane_bytes >= MIN_LANE_BYTES:
        lanes = np.frombuffer(data, dtype=np.uint8, count=count * lane_bytes).reshape(count, lane_bytes)
        from_zero = np.zeros(count, dtype=np.uint32)
        for column in lanes.T:
            from_zero = TABLE[(from_zero ^ column) & 0xFF] ^ (from_zero >> 8)
        t0, t1, t2, t3 = _through_zeros(lane_bytes)
        for lane in from_zero.tolist():
            register = (
                t0[register & 0xFF] ^ t1[(register >> 8) & 0xFF] ^ t2[(register >> 16) & 0xFF] ^ t3[register >> 24]
            ) ^ lane
        data = data[count * lane_bytes :]
    for byte in data:
        register = TABLE_LIST[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """What a TFRecord stores: the CRC rotated right by 15 bits plus a constant (TensorFlow's mask)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
