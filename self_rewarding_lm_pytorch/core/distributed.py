"""`Shard`: which share of a split job this process does, and the two collectives such jobs need.

Generation is split across processes in contiguous shares or in rounds of chunks; the results are
gathered in rank order, so every process ends with what one process would have made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Shard"]


@dataclass(frozen=True)
class Shard:
    """This process's place among `world` processes; one process by default."""

    rank: int = 0
    world: int = 1
    accelerator: Any = None

    @classmethod
    def of(cls, accelerator) -> Shard:
        if accelerator is None or accelerator.num_processes == 1:
            return cls()
        return cls(accelerator.process_index, accelerator.num_processes, accelerator)

    def gather(self, obj) -> list:
        """`obj` of every process, in rank order (a collective: every process must call it)."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def from_main(self, obj):
        """The main process's `obj` on every process (the others may not read its files)."""
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]

    def share(self, n: int) -> range:
        """This process's contiguous share of `n` items (sizes differ by at most one)."""
        return range(n * self.rank // self.world, n * (self.rank + 1) // self.world)

    def gather_lists(self, items: list) -> list:
        """Every process's `items` concatenated in rank order (a collective)."""
        return [x for part in self.gather(items) for x in part]
