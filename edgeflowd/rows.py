"""Half-open row ranges along a feature map's height (dim 2 of an NCHW tensor)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RowRange"]


@dataclass(frozen=True, order=True)
class RowRange:
    """Rows ``[start, stop)``. ``start`` may be negative and ``stop`` may pass the height while a
    range still describes a window's reach into padding; :meth:`clip` makes it a real slice."""

    start: int
    stop: int

    def __post_init__(self) -> None:
        if self.stop < self.start:
            raise ValueError(f"row range [{self.start}, {self.stop}) has stop before start")

    def __len__(self) -> int:
        return self.stop - self.start

    def __str__(self) -> str:
        return f"[{self.start},{self.stop})"

    @property
    def empty(self) -> bool:
        return self.stop == self.start

    def clip(self, height: int) -> RowRange:
        """The part of this range that lies inside ``[0, height)`` (empty ranges collapse to 0)."""
        start, stop = max(self.start, 0), min(self.stop, height)
        return RowRange(start, stop) if stop > start else RowRange(0, 0)

    def intersect(self, other: RowRange) -> RowRange:
        start, stop = max(self.start, other.start), min(self.stop, other.stop)
        return RowRange(start, stop) if stop > start else RowRange(0, 0)

    def union_hull(self, other: RowRange) -> RowRange:
        """Smallest range holding both (empty ranges are ignored)."""
        if self.empty:
            return other
        if other.empty:
            return self
        return RowRange(min(self.start, other.start), max(self.stop, other.stop))

    def contains(self, other: RowRange) -> bool:
        return other.empty or (self.start <= other.start and other.stop <= self.stop)

    def shift(self, offset: int) -> RowRange:
        return RowRange(self.start + offset, self.stop + offset)

    def to_json(self) -> list[int]:
        return [self.start, self.stop]

    @classmethod
    def from_json(cls, value: object) -> RowRange:
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise ValueError(f"a row range is a list [start, stop] of two integers, got {value!r}")
        return cls(value[0], value[1])
