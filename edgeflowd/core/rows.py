"""Half-open row ranges along a feature map's height (dim 2 of an NCHW tensor)."""

from __future__ import annotations

__all__ = ["RowRange"]


class RowRange:
    """Rows ``[start, stop)``. ``start`` may be negative and ``stop`` may pass the height while a
    range still describes a window's reach into padding; :meth:`clip` makes it a real slice.

    Immutable value type. Written by hand rather than as a frozen dataclass: planners create
    hundreds of thousands of these, and a frozen dataclass's ``__init__`` is several times slower.
    """

    __slots__ = ("start", "stop")
    start: int
    stop: int

    def __init__(self, start: int, stop: int) -> None:
        if stop < start:
            raise ValueError(f"row range [{start}, {stop}) has stop before start")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "stop", stop)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("RowRange is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RowRange) and self.start == other.start and self.stop == other.stop

    def __lt__(self, other: RowRange) -> bool:
        return (self.start, self.stop) < (other.start, other.stop)

    def __hash__(self) -> int:
        return hash((self.start, self.stop))

    def __repr__(self) -> str:
        return f"RowRange(start={self.start}, stop={self.stop})"

    def __reduce__(self) -> tuple[type[RowRange], tuple[int, int]]:
        return (RowRange, (self.start, self.stop))

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
