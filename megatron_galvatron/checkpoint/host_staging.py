"""Host buffers an --async-save copies the checkpoint into, so that training waits neither for
the copy nor for the disk.

On a GPU a copy into pageable memory runs at a fraction of the bus's speed and blocks the host
until it is done, and allocating (and first touching) tens of GB of host memory every save costs
seconds more. So each tensor this rank saves gets a page-locked buffer, kept from one save to the
next, and the copies into them are queued on the current stream: after the step that produced
the values and before the next step's optimizer update changes them, so the host does not wait
for them; the writing thread waits for an event recorded after the last one.

Page-locking is slow too (tens of seconds for tens of GB), so `prepare` does it in a thread of its
own once the shapes are known (after the first step, when AdamW has made its state), with the GIL
released (cudaHostRegister of ordinary memory, which also pins exactly the bytes asked for, not
the next power of two as torch's pinned allocator would). A save that comes before a buffer is
ready copies that tensor into pageable memory instead. On CPU every copy is a plain clone."""
import threading
from typing import Dict, List, Optional, Tuple

import torch


def _register(t: torch.Tensor) -> bool:
    rc = torch.cuda.cudart().cudaHostRegister(t.data_ptr(), t.numel() * t.element_size(), 0)
    return int(getattr(rc, "value", rc)) == 0


class HostStaging:
    def __init__(self):
        self._buffers: Dict[str, torch.Tensor] = {}  # filled by the preparing thread, one finished buffer at a time
        self._event: Optional[torch.cuda.Event] = None
        self._thread: Optional[threading.Thread] = None
        self._prepared = False

    @property
    def preparing(self) -> bool:
        """Whether prepare has been called (its buffers may still be coming)."""
        return self._prepared

    def prepare(self, layout: List[Tuple[str, Tuple[int, ...], torch.dtype, torch.device]]) -> None:
        """Start page-locking a buffer for each (key, shape, dtype, device) of a CUDA tensor, once."""
        if self._prepared:
            return
        self._prepared = True
        wanted = [(k, s, d) for k, s, d, dev in layout if dev.type == "cuda" and len(s)]
        if not wanted:
            return
        self._thread = threading.Thread(target=self._allocate, args=(wanted,), name="pin-save-buffers", daemon=True)
        self._thread.start()

    def _allocate(self, wanted) -> None:
        for key, shape, dtype in wanted:
            buf = torch.empty(shape, dtype=dtype)
            if not _register(buf):  # out of lockable memory: the rest go through pageable copies
                return
            self._buffers[key] = buf

    def copy(self, key: str, t: torch.Tensor) -> torch.Tensor:
        """A host copy of t, valid once wait() returns and until the next save begins."""
        buf = self._buffers.get(key)
        if t.device.type != "cuda" or buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            return t.to("cpu", copy=True)
        buf.copy_(t, non_blocking=True)
        return buf

    def queued(self) -> None:
        """Every copy of this save is queued: mark the point the writer waits for."""
        if self._buffers and torch.cuda.is_available():
            self._event = torch.cuda.Event()
            self._event.record()

    def wait(self) -> None:
        """Block (the writing thread) until every queued copy has landed in host memory."""
        if self._event is not None:
            self._event.synchronize()
            self._event = None

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in list(self._buffers.values()))
