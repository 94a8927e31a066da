"""The few bpf(2) commands Weir issues itself, through ctypes.

Why not only bcc: bcc 0.26 has no way to open a pinned object without compiling a program, does
not check a pinned map's shape before reusing it, raises bare ``Exception`` (losing the errno the
map layer needs to tell "map full" from other failures), aliases the count and cursor of its batch
lookup, and has no bpf_link API. These are thin, typed wrappers over the syscall: each builds the
``union bpf_attr`` member for one command and raises :class:`OSError` with the kernel's errno.
Nothing here knows about load balancing.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

_SYS_BPF = 321  # x86_64
_ATTR_SIZE = 128  # larger than every member used here; the kernel requires unused bytes be zero

# enum bpf_cmd
MAP_CREATE = 0
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
OBJ_PIN = 6
OBJ_GET = 7
PROG_QUERY = 16
OBJ_GET_INFO_BY_FD = 15
MAP_LOOKUP_BATCH = 24
MAP_UPDATE_BATCH = 26
MAP_DELETE_BATCH = 27
LINK_CREATE = 28
LINK_UPDATE = 29
LINK_DETACH = 34
PROG_GET_FD_BY_ID = 13
ENABLE_STATS = 32
_STATS_RUN_TIME = 0  # enum bpf_stats_type
_PROG_INFO_SIZE = 232  # sizeof(struct bpf_prog_info), kernel 6.x uapi
_RUN_TIME_NS_OFFSET = 192  # offsetof(struct bpf_prog_info, run_time_ns); run_cnt follows

# enum bpf_map_type (the ones Weir uses)
MAP_TYPE_HASH = 1
MAP_TYPE_ARRAY = 2
MAP_TYPE_PERCPU_ARRAY = 6
MAP_TYPE_LRU_HASH = 9
MAP_TYPE_LPM_TRIE = 11
MAP_TYPE_RINGBUF = 27
MAP_TYPE_NAMES = {
    1: "hash",
    2: "array",
    5: "percpu_hash",
    6: "percpu_array",
    9: "lru_hash",
    11: "lpm_trie",
    27: "ringbuf",
}

BPF_F_NO_PREALLOC = 1
BPF_ANY = 0

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    ret = int(_libc.syscall(_SYS_BPF, cmd, attr, _ATTR_SIZE))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _attr(*fields: tuple[int, str, int]) -> ctypes.Array[ctypes.c_char]:
    """A zeroed bpf_attr with (offset, struct format char, value) fields packed in."""
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    for offset, fmt, value in fields:
        ctype = ctypes.c_uint32 if fmt == "I" else ctypes.c_uint64
        ctype.from_buffer(buf, offset).value = value
    return buf


def _addr(obj: ctypes.Array[ctypes.c_char] | ctypes._CData | None) -> int:
    return 0 if obj is None else ctypes.addressof(obj)


def obj_get(path: Path | str) -> int:
    """Open a pinned object (map, program or link); returns a new fd."""
    name = ctypes.create_string_buffer(os.fsencode(str(path)))
    return _bpf(OBJ_GET, _attr((0, "Q", _addr(name))))


def obj_pin(fd: int, path: Path | str) -> None:
    name = ctypes.create_string_buffer(os.fsencode(str(path)))
    _bpf(OBJ_PIN, _attr((0, "Q", _addr(name)), (8, "I", fd)))


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, flags: int) -> int:
    return _bpf(
        MAP_CREATE,
        _attr(
            (0, "I", map_type),
            (4, "I", key_size),
            (8, "I", value_size),
            (12, "I", max_entries),
            (16, "I", flags),
        ),
    )


@dataclass(frozen=True, slots=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


def map_info(fd: int) -> MapInfo:
    info = (ctypes.c_uint32 * 16)()  # struct bpf_map_info head: 6 u32, then char name[16]
    _bpf(
        OBJ_GET_INFO_BY_FD,
        _attr((0, "I", fd), (4, "I", ctypes.sizeof(info)), (8, "Q", _addr(info))),
    )
    name = bytes(info)[24:40].split(b"\0", 1)[0].decode(errors="replace")
    return MapInfo(info[0], info[1], info[2], info[3], info[4], info[5], name)


@dataclass(frozen=True, slots=True)
class LinkInfo:
    type: int
    id: int
    prog_id: int
    cgroup_id: int
    attach_type: int


def link_info(fd: int) -> LinkInfo:
    info = (ctypes.c_uint32 * 16)()  # type, id, prog_id, pad, then (aligned 8) cgroup_id, type
    _bpf(
        OBJ_GET_INFO_BY_FD,
        _attr((0, "I", fd), (4, "I", ctypes.sizeof(info)), (8, "Q", _addr(info))),
    )
    cgroup_id = info[4] | (info[5] << 32)
    return LinkInfo(info[0], info[1], info[2], cgroup_id, info[6])


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    return _bpf(LINK_CREATE, _attr((0, "I", prog_fd), (4, "I", target_fd), (8, "I", attach_type)))


def link_update(link_fd: int, new_prog_fd: int) -> None:
    """Atomically swap the program behind a link: the hook is never empty."""
    _bpf(LINK_UPDATE, _attr((0, "I", link_fd), (4, "I", new_prog_fd)))


def link_detach(link_fd: int) -> None:
    _bpf(LINK_DETACH, _attr((0, "I", link_fd)))


def prog_query(target_fd: int, attach_type: int, max_progs: int = 64) -> list[int]:
    """Ids of the programs attached to a cgroup for one attach type (effective for this cgroup)."""
    ids = (ctypes.c_uint32 * max_progs)()
    attr = _attr(
        (0, "I", target_fd), (4, "I", attach_type), (16, "Q", _addr(ids)), (24, "I", max_progs)
    )
    _bpf(PROG_QUERY, attr)
    count = ctypes.c_uint32.from_buffer(attr, 24).value
    return list(ids[:count])


def prog_get_fd_by_id(prog_id: int) -> int:
    """A new fd on the loaded program with this id (e.g. one ``prog_query`` returned)."""
    return _bpf(PROG_GET_FD_BY_ID, _attr((0, "I", prog_id)))


def prog_run_stats(prog_fd: int) -> tuple[int, int]:
    """The program's ``run_time_ns`` and ``run_cnt`` (both stay 0 while statistics are off)."""
    info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
    _bpf(
        OBJ_GET_INFO_BY_FD,
        _attr((0, "I", prog_fd), (4, "I", _PROG_INFO_SIZE), (8, "Q", _addr(info))),
    )
    run_time_ns, run_cnt = (ctypes.c_uint64 * 2).from_buffer(info, _RUN_TIME_NS_OFFSET)
    return int(run_time_ns), int(run_cnt)


def enable_run_time_stats() -> int:
    """Switch BPF run-time statistics on; they stay on while the returned fd is open (the kernel
    turns them off when the last such fd closes, also when its process dies)."""
    return _bpf(ENABLE_STATS, _attr((0, "I", _STATS_RUN_TIME)))


def map_update(fd: int, key: ctypes._CData, value: ctypes._CData) -> None:
    _bpf(MAP_UPDATE_ELEM, _attr((0, "I", fd), (8, "Q", _addr(key)), (16, "Q", _addr(value))))


def map_delete(fd: int, key: ctypes._CData) -> None:
    _bpf(MAP_DELETE_ELEM, _attr((0, "I", fd), (8, "Q", _addr(key))))


def map_lookup(fd: int, key: ctypes._CData, value: ctypes._CData) -> None:
    _bpf(MAP_LOOKUP_ELEM, _attr((0, "I", fd), (8, "Q", _addr(key)), (16, "Q", _addr(value))))


def map_get_next_key(fd: int, key: ctypes._CData | None, next_key: ctypes._CData) -> None:
    """The key after ``key`` (the first key when None); ENOENT at the end."""
    _bpf(MAP_GET_NEXT_KEY, _attr((0, "I", fd), (8, "Q", _addr(key)), (16, "Q", _addr(next_key))))


def _batch_attr(
    fd: int,
    keys: ctypes._CData | None,
    values: ctypes._CData | None,
    count: int,
    in_batch: ctypes._CData | None = None,
    out_batch: ctypes._CData | None = None,
) -> ctypes.Array[ctypes.c_char]:
    # struct { in_batch, out_batch, keys, values: u64; count, map_fd: u32; elem_flags, flags }
    return _attr(
        (0, "Q", _addr(in_batch)),
        (8, "Q", _addr(out_batch)),
        (16, "Q", _addr(keys)),
        (24, "Q", _addr(values)),
        (32, "I", count),
        (36, "I", fd),
    )


def _batch(cmd: int, attr: ctypes.Array[ctypes.c_char], count: int) -> int:
    """Run an update/delete batch command; on error the kernel's count of entries it did
    (written back into ``attr.count``) is set as ``.done`` on the OSError."""
    try:
        _bpf(cmd, attr)
    except OSError as exc:
        exc.done = ctypes.c_uint32.from_buffer(attr, 32).value  # type: ignore[attr-defined]
        raise
    return count


def map_update_batch(fd: int, keys: ctypes._CData, values: ctypes._CData, count: int) -> int:
    """Returns how many entries were written; on error raises OSError with ``.done`` set."""
    return _batch(MAP_UPDATE_BATCH, _batch_attr(fd, keys, values, count), count)


def map_delete_batch(fd: int, keys: ctypes._CData, count: int) -> int:
    return _batch(MAP_DELETE_BATCH, _batch_attr(fd, keys, None, count), count)


def map_lookup_batch(
    fd: int,
    keys: ctypes._CData,
    values: ctypes._CData,
    count: int,
    cursor: ctypes._CData,
    first: bool,
) -> tuple[int, bool]:
    """One BPF_MAP_LOOKUP_BATCH step: (entries read, more to come). ``cursor`` is an opaque
    buffer at least key-sized; it carries the position from one step to the next."""
    attr = _batch_attr(fd, keys, values, count, None if first else cursor, cursor)
    try:
        _bpf(MAP_LOOKUP_BATCH, attr)
    except OSError as exc:
        if exc.errno != 2:  # ENOENT: the last batch (possibly empty)
            raise
        return ctypes.c_uint32.from_buffer(attr, 32).value, False
    return ctypes.c_uint32.from_buffer(attr, 32).value, True


# --- the same commands on raw addresses (packed bytearrays, see bpflayout.Packed) -----------------


def map_update_at(fd: int, key: int, value: int) -> None:
    _bpf(MAP_UPDATE_ELEM, _attr((0, "I", fd), (8, "Q", key), (16, "Q", value)))


def map_delete_at(fd: int, key: int) -> None:
    _bpf(MAP_DELETE_ELEM, _attr((0, "I", fd), (8, "Q", key)))


def _batch_at(cmd: int, fd: int, keys: int, values: int, count: int) -> int:
    attr = _attr((16, "Q", keys), (24, "Q", values), (32, "I", count), (36, "I", fd))
    return _batch(cmd, attr, count)


def map_update_batch_at(fd: int, keys: int, values: int, count: int) -> int:
    """BPF_MAP_UPDATE_BATCH on arrays at raw addresses; on error ``.done`` is set."""
    return _batch_at(MAP_UPDATE_BATCH, fd, keys, values, count)


def map_delete_batch_at(fd: int, keys: int, count: int) -> int:
    return _batch_at(MAP_DELETE_BATCH, fd, keys, 0, count)
