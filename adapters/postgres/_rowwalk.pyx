# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled hot path of `adapters.postgres.rowmask.RowMasker.mask_rows` (optional).

Same contract and the same result, byte for byte, as the pure-Python `RowMasker._mask_rows_py`
(tests/property/test_rowmask_props.py compares them): walk the run of complete DataRow messages
in data[pos:limit], call the column maskers on the masked columns' values, and return the bytes
to send in their place plus the position after the last complete DataRow. Only the length walk
and the re-framing are compiled; the mask functions stay in Python. When this module is not
built (no C compiler), `rowmask` uses the Python version.

`plan` holds one entry per column up to the last masked one: None (not masked) or a tuple
(masker, count index, code, a, b); the count index is -1 when the masker counts for itself.
`code` lets the walk run the simplest maskers itself, on ASCII values (anything else goes to
the Python masker): 0 call the masker, 1 constant `a`, 2 NULL, 3 partial keeping the first `a`
and last `b` characters, 4 email (`a`: what a non-email becomes). `masking.functions` marks its
maskers with `fast` descriptors; `rowmask.RowMasker` turns them into these codes.
"""

from libc.string cimport memcmp, memcpy, memset

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE


cdef inline long _i32(const unsigned char* p) noexcept nogil:
    cdef unsigned long v = (<unsigned long>p[0] << 24) | (<unsigned long>p[1] << 16) | (<unsigned long>p[2] << 8) | p[3]
    if v & 0x80000000UL:
        return <long>v - 0x100000000L
    return <long>v


cdef inline bint _ascii(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if p[i] & 0x80:
            return False
    return True


cdef inline bint _space(unsigned char c) noexcept nogil:
    return c == 32 or (9 <= c <= 13)


cdef bytes _partial(const unsigned char* p, Py_ssize_t n, Py_ssize_t first, Py_ssize_t last):
    """value[:first] + "*" * (n - first - last) + value[n - last:], or all stars when short."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef char* o = PyBytes_AS_STRING(out)
    if first + last >= n:
        memset(o, 42, n)
        return out
    memcpy(o, p, first)
    memset(o + first, 42, n - first - last)
    memcpy(o + n - last, p + n - last, last)
    return out


cdef object _email(const unsigned char* p, Py_ssize_t n, bytes invalid):
    """The masking.functions email mask on an ASCII value: `a****@domain` (`*****@domain` for
    a one-character local part); `invalid` when it is not an email address."""
    cdef Py_ssize_t i, at = -1, label = 0, dot = -1
    cdef unsigned char c
    for i in range(n):
        c = p[i]
        if _space(c):
            return invalid
        if c == 64:  # '@'
            if at >= 0:
                return invalid
            at = i
            label = i + 1
        elif c == 46 and at >= 0:  # '.' in the domain
            if i == label:
                return invalid  # empty label
            dot = i
            label = i + 1
    if at < 1 or dot < 0 or n - dot - 1 < 2:
        return invalid
    for i in range(dot + 1, n):
        c = p[i]
        if not ((65 <= c <= 90) or (97 <= c <= 122)):
            return invalid
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 5 + n - at)
    cdef char* o = PyBytes_AS_STRING(out)
    o[0] = <char>p[0] if at > 1 else 42
    memset(o + 1, 42, 4)
    memcpy(o + 5, p + at, n - at)
    return out


cdef inline bytes _pack(long n):
    cdef unsigned char buf[4]
    cdef unsigned long v = <unsigned long>(n & 0xFFFFFFFFL)
    buf[0] = (v >> 24) & 0xFF
    buf[1] = (v >> 16) & 0xFF
    buf[2] = (v >> 8) & 0xFF
    buf[3] = v & 0xFF
    return PyBytes_FromStringAndSize(<char*>buf, 4)


def mask_rows(bytes data, Py_ssize_t pos, Py_ssize_t limit, int ncols, tuple plan, list counts):
    cdef const unsigned char* d = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t seg = pos, end, p, prev, start, vend
    cdef long n, delta, newlen
    cdef int columns, i, nplan = len(plan)
    cdef list out = []
    cdef list row
    cdef object entry, value, new
    cdef Py_ssize_t index
    cdef int code
    if limit > size:
        limit = size
    while limit - pos >= 7 and d[pos] == 0x44:
        end = pos + 1 + _i32(d + pos + 1)
        if end > limit or end < pos + 7:
            if end < pos + 7:
                raise ValueError("invalid DataRow length")
            break
        columns = (d[pos + 5] << 8) | d[pos + 6]
        if columns != ncols:
            raise ValueError(f"DataRow has {columns} columns, expected {ncols}")
        p = pos + 7
        prev = pos + 5
        row = None
        delta = 0
        for i in range(nplan):
            if p + 4 > end:
                raise ValueError("DataRow is truncated")
            n = _i32(d + p)
            entry = plan[i]
            if entry is None:
                if n > 0:
                    p += 4 + n
                elif n == -1 or n == 0:
                    p += 4
                else:
                    raise ValueError(f"invalid value length {n}")
                continue
            start = p
            p += 4
            if n < 0:
                if n != -1:
                    raise ValueError(f"invalid value length {n}")
                continue
            vend = p + n
            if vend > end:
                raise ValueError("DataRow is truncated")
            index = (<tuple>entry)[1]
            if index >= 0:
                counts[index] += 1
            code = (<tuple>entry)[2]
            if code == 1:  # constant
                new = (<tuple>entry)[3]
                if PyBytes_GET_SIZE(new) == n and memcmp(PyBytes_AS_STRING(new), d + p, n) == 0:
                    p = vend
                    continue
            elif code == 2:  # NULL
                new = None
            elif code == 3 and _ascii(d + p, n):
                new = _partial(d + p, n, (<tuple>entry)[3], (<tuple>entry)[4])
                if memcmp(PyBytes_AS_STRING(new), d + p, n) == 0:
                    p = vend
                    continue
            elif code == 4 and _ascii(d + p, n):
                new = _email(d + p, n, (<tuple>entry)[3])
                if PyBytes_GET_SIZE(new) == n and memcmp(PyBytes_AS_STRING(new), d + p, n) == 0:
                    p = vend
                    continue
            else:
                value = data[p:vend]
                new = (<tuple>entry)[0](value)
                if new is value or new == value:
                    p = vend
                    continue
            p = vend
            if row is None:
                row = [None]
            row.append(data[prev:start])
            if new is None:
                row.append(b"\xff\xff\xff\xff")
                delta -= n
            else:
                if type(new) is not bytes:
                    new = bytes(new)
                newlen = PyBytes_GET_SIZE(new)
                row.append(_pack(newlen) + new)
                delta += newlen - n
            prev = vend
        if p > end:
            raise ValueError("DataRow is truncated")
        if row is not None:
            if seg < pos:
                out.append(data[seg:pos])
            row[0] = b"D" + _pack(end - pos - 1 + delta)
            row.append(data[prev:end])
            out.append(b"".join(row))
            seg = end
        pos = end
    if seg < pos:
        out.append(data[seg:pos])
    return out, pos
