"""One UTF-8 decoding step shared by the compiled kernels (MinHash shingling, fastText scoring)."""

from __future__ import annotations

try:
    import numba
except ImportError:  # pragma: no cover - the kernels that call this need numba too
    numba = None

if numba is not None:

    @numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")
    def decode_utf8(buf, p, lead):  # noqa: ANN001, ANN201
        """(code point, width) of the multi-byte UTF-8 sequence at ``buf[p]`` (lead >= 0x80)."""
        if lead < 0xE0:
            width, cp = 2, lead & 0x1F
        elif lead < 0xF0:
            width, cp = 3, lead & 0x0F
        else:
            width, cp = 4, lead & 0x07
        for k in range(1, width):
            cp = (cp << 6) | (buf[p + k] & 0x3F)
        return cp, width
