"""ctypes types built from an object's BTF, so Python reads the C structs from the one definition.

A map's key and value, a ring-buffer event, a ``const volatile`` global: each is described by the BTF
that clang emits with ``-g``. This module turns those descriptions into ``ctypes`` types with the exact
layout (offsets and size checked against BTF). Bitfields and function types are not supported: no
structure that crosses the kernel/user boundary in this project uses them.
"""

from __future__ import annotations

import ctypes
import ipaddress
from ctypes import c_uint32

from bpf.libbpf import lib

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 8, 9, 10, 11
KIND_VAR, KIND_DATASEC, KIND_FLOAT, KIND_TYPE_TAG, KIND_ENUM64 = 14, 15, 16, 18, 19
_QUALIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}
_INT_SIGNED = 1

_UNSIGNED = {1: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 8: ctypes.c_uint64}
_SIGNED = {1: ctypes.c_int8, 2: ctypes.c_int16, 4: ctypes.c_int32, 8: ctypes.c_int64}


class BtfError(TypeError):
    """A BTF type cannot be represented, or a name is not in the object's BTF."""


class _Member(ctypes.Structure):
    _fields_ = [("name_off", c_uint32), ("type", c_uint32), ("offset", c_uint32)]


class _Array(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("index_type", c_uint32), ("nelems", c_uint32)]


class _VarSecinfo(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("offset", c_uint32), ("size", c_uint32)]


class _Enum(ctypes.Structure):
    _fields_ = [("name_off", c_uint32), ("val", ctypes.c_int32)]


class _Enum64(ctypes.Structure):
    _fields_ = [("name_off", c_uint32), ("val_lo32", c_uint32), ("val_hi32", c_uint32)]


class Btf:
    """The BTF of one opened object (borrowed from libbpf: lives as long as the object)."""

    def __init__(self, handle: int) -> None:
        self._handle = handle
        self._ctypes: dict[int, type] = {}

    def _type(self, type_id: int):
        return lib.btf__type_by_id(self._handle, type_id).contents

    def _records(self, t, record_type):
        vlen = t.info & 0xFFFF
        address = ctypes.addressof(t) + ctypes.sizeof(t)
        return (record_type * vlen).from_address(address)

    def _name(self, offset: int) -> str:
        name = lib.btf__name_by_offset(self._handle, offset)
        return name.decode() if name else ""

    def find(self, name: str, kind: int = KIND_STRUCT) -> int:
        type_id = lib.btf__find_by_name_kind(self._handle, name.encode(), kind)
        if type_id < 0:
            raise BtfError(f"no type {name!r} (BTF kind {kind}) in the object's BTF")
        return type_id

    def struct(self, name: str) -> type:
        """The ctypes Structure for ``struct name``."""
        return self.ctype(self.find(name, KIND_STRUCT))

    def enum(self, name: str) -> dict[str, int]:
        """The members of ``enum name`` (ENUM or ENUM64) and their values, in declaration order.

        Values are unsigned unless BTF marks the enum signed (``kind_flag``), as libbpf reads them.
        clang emits an enum only if an emitted type or a global uses it: an enum that no map, struct
        or global of the object mentions needs an unused global of its type to be found here.
        """
        type_id = lib.btf__find_by_name_kind(self._handle, name.encode(), KIND_ENUM)
        if type_id < 0:
            type_id = lib.btf__find_by_name_kind(self._handle, name.encode(), KIND_ENUM64)
        if type_id < 0:
            raise BtfError(
                f"no enum {name!r} in the object's BTF (clang emits an enum only if an emitted type "
                "or a global uses it: declare an unused global of its type)"
            )
        t = self._type(type_id)
        is_enum32 = (t.info >> 24) & 0x1F == KIND_ENUM
        signed = bool(t.info >> 31)
        members = {}
        for record in self._records(t, _Enum if is_enum32 else _Enum64):
            if is_enum32:
                value = record.val if signed else record.val & 0xFFFFFFFF
            else:
                value = record.val_hi32 << 32 | record.val_lo32
                if signed and value >> 63:
                    value -= 1 << 64
            members[self._name(record.name_off)] = value
        return members

    def datasec(self, section: str) -> dict[str, tuple[int, type]]:
        """Variables of a data section (``.rodata``, ``.bss``): name -> (offset, ctypes type)."""
        t = self._type(self.find(section, KIND_DATASEC))
        variables = {}
        for info in self._records(t, _VarSecinfo):
            var = self._type(info.type)
            if (var.info >> 24) & 0x1F == KIND_VAR:
                variables[self._name(var.name_off)] = (info.offset, self.ctype(var.size_or_type))
        return variables

    def ctype(self, type_id: int) -> type:
        if type_id not in self._ctypes:
            self._ctypes[type_id] = self._build(type_id)
        return self._ctypes[type_id]

    def _build(self, type_id: int) -> type:
        t = self._type(type_id)
        kind = (t.info >> 24) & 0x1F
        if kind in _QUALIFIERS:
            return self.ctype(t.size_or_type)
        if kind == KIND_INT:
            encoding = ctypes.c_uint32.from_address(ctypes.addressof(t) + ctypes.sizeof(t)).value
            if encoding & 0xFF != t.size_or_type * 8:
                raise BtfError(f"BTF type {type_id}: bitfield integers are not supported")
            if self._name(t.name_off) == "char":
                return ctypes.c_char
            table = _SIGNED if (encoding >> 24) & _INT_SIGNED else _UNSIGNED
            return table[t.size_or_type]
        if kind in (KIND_ENUM, KIND_ENUM64):
            return _SIGNED[t.size_or_type] if t.info >> 31 else _UNSIGNED[t.size_or_type]
        if kind == KIND_PTR:
            return ctypes.c_uint64
        if kind == KIND_FLOAT:
            return {4: ctypes.c_float, 8: ctypes.c_double}[t.size_or_type]
        if kind == KIND_ARRAY:
            array = _Array.from_address(ctypes.addressof(t) + ctypes.sizeof(t))
            return self.ctype(array.type) * array.nelems
        if kind in (KIND_STRUCT, KIND_UNION):
            return self._composite(type_id, t, kind == KIND_UNION)
        raise BtfError(
            f"BTF type {type_id} ({self._name(t.name_off)!r}) has unsupported kind {kind}"
        )

    def _composite(self, type_id: int, t, is_union: bool) -> type:
        name = self._name(t.name_off) or f"anon_{type_id}"
        kind_flag = t.info >> 31
        fields: list[tuple[str, type]] = []
        anonymous = []
        position = 0
        for index, member in enumerate(self._records(t, _Member)):
            bit_offset = member.offset & 0xFFFFFF if kind_flag else member.offset
            if (kind_flag and member.offset >> 24) or bit_offset % 8:
                raise BtfError(f"struct {name}: bitfield members are not supported")
            offset = bit_offset // 8
            # Packed with explicit padding: the layout is BTF's, not ctypes' idea of alignment.
            if not is_union and offset > position:
                fields.append((f"_pad{position}", ctypes.c_uint8 * (offset - position)))
            member_name = self._name(member.name_off)
            if not member_name:
                member_name = f"_anon{index}"
                anonymous.append(member_name)
            member_type = self.ctype(member.type)
            fields.append((member_name, member_type))
            position = max(position, offset + ctypes.sizeof(member_type))
        if not is_union and t.size_or_type > position:
            fields.append((f"_pad{position}", ctypes.c_uint8 * (t.size_or_type - position)))
        base = ctypes.Union if is_union else ctypes.Structure
        namespace = {"_pack_": 1, "_anonymous_": anonymous, "_fields_": fields}
        cls = type(name, (base,), namespace)
        if ctypes.sizeof(cls) != t.size_or_type:
            raise BtfError(
                f"struct {name}: ctypes size {ctypes.sizeof(cls)} != BTF {t.size_or_type}"
            )
        return cls


def fields_of(value: ctypes.Structure) -> dict[str, object]:
    """A struct's named fields as plain Python values (nested structs as dicts, arrays as lists)."""
    fields: dict[str, object] = {}
    for name, _ in value._fields_:
        if name in value._anonymous_:
            fields.update(fields_of(getattr(value, name)))
        elif not name.startswith("_pad"):
            fields[name] = plain(getattr(value, name))
    return fields


def plain(value: object) -> object:
    if isinstance(value, ctypes.Structure | ctypes.Union):
        return fields_of(value)
    if isinstance(value, ctypes.Array):
        return [plain(v) for v in value]
    return value


# --- network-order fields: a __be16 or __be32 read into a ctypes integer on this little-endian host


def be16(value: int) -> int:
    """The integer whose memory holds ``value`` (a port) in network order: htons."""
    return int.from_bytes(value.to_bytes(2, "big"), "little")


def from_be16(field: int) -> int:
    """The value of a __be16 field: ntohs."""
    return int.from_bytes(field.to_bytes(2, "little"), "big")


def be32(addr: ipaddress.IPv4Address) -> int:
    """The integer whose memory holds ``addr`` in network order (a __be32 field)."""
    return int.from_bytes(addr.packed, "little")


def from_be32(field: int) -> ipaddress.IPv4Address:
    """The IPv4 address a __be32 field holds."""
    return ipaddress.IPv4Address(field.to_bytes(4, "little"))
