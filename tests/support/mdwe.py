"""Run a program under systemd's ``MemoryDenyWriteExecute=yes``, without systemd:

    python tests/support/mdwe.py PROGRAM [ARG...]

installs the seccomp filter systemd 252 installs for it (``seccomp_memory_deny_write_
execute`` in src/shared/seccomp-util.c), then ``execv``s PROGRAM, which keeps it. The
filter answers ``EPERM`` to ``mmap`` asking for memory both writable and executable, to
``mprotect`` and ``pkey_mprotect`` adding ``PROT_EXEC``, and to ``shmat`` with
``SHM_EXEC``. Other architectures than the native one are let through here (the unit's
``SystemCallArchitectures=native`` refuses them anyway). x86-64 and aarch64 only.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
RET_ALLOW, RET_EPERM = 0x7FFF0000, 0x00050000 | 1
LD_ABS, JEQ, JSET, AND, RET = 0x20, 0x15, 0x45, 0x54, 0x06
NR, ARCH, ARG2 = 0, 4, 16 + 2 * 8  # offsets in struct seccomp_data (little-endian)

#: machine -> (AUDIT_ARCH_*, mmap, mprotect, pkey_mprotect, shmat)
SYSCALLS = {
    "x86_64": (0xC000003E, 9, 10, 329, 30),
    "aarch64": (0xC00000B7, 222, 226, 288, 196),
}


def filter_program() -> list[tuple[int, str | int, str | int, int]]:
    """(code, jump-if-true, jump-if-false, k); jumps name labels, resolved below."""
    arch, mmap, mprotect, pkey_mprotect, shmat = SYSCALLS[platform.machine()]
    return [
        (LD_ABS, 0, 0, ARCH),
        (JEQ, 0, "allow", arch),
        (LD_ABS, 0, 0, NR),
        (JEQ, "mmap", 0, mmap),
        (JEQ, "exec", 0, mprotect),
        (JEQ, "exec", 0, pkey_mprotect),
        (JEQ, "shmat", 0, shmat),
        (RET, 0, 0, RET_ALLOW),
        (LD_ABS, 0, 0, ARG2),  # mmap: prot has both PROT_WRITE and PROT_EXEC
        (AND, 0, 0, PROT_WRITE | PROT_EXEC),
        (JEQ, "deny", "allow", PROT_WRITE | PROT_EXEC),
        (LD_ABS, 0, 0, ARG2),  # mprotect, pkey_mprotect: prot has PROT_EXEC
        (JSET, "deny", "allow", PROT_EXEC),
        (LD_ABS, 0, 0, ARG2),  # shmat: shmflg has SHM_EXEC
        (JSET, "deny", "allow", SHM_EXEC),
        (RET, 0, 0, RET_EPERM),
        (RET, 0, 0, RET_ALLOW),
    ]


LABELS = {"mmap": 8, "exec": 11, "shmat": 13, "deny": 15, "allow": 16}


def assemble() -> bytes:
    code = b""
    for pc, (op, jt, jf, k) in enumerate(filter_program()):
        to = [LABELS[j] - pc - 1 if isinstance(j, str) else j for j in (jt, jf)]
        code += struct.pack("HBBI", op, to[0], to[1], k)
    return code


def install() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    code = ctypes.create_string_buffer(assemble())

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    program = Program(len(code.raw) // 8, ctypes.addressof(code))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


if __name__ == "__main__":
    install()
    os.execv(sys.argv[1], sys.argv[1:])
