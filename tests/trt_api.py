"""TensorRT's Python API as a release ships it, read without loading it, and the project's uses checked against it.

Test-only tooling for tests/test_trt_conformance.py (imported from tests/, never installed with the package).

    api = read_bindings("tensorrt_cu13_bindings-11.4.0.106-...whl")   # classes -> members, signatures, plugin API
    uses = project_uses(["runtime", "export", "kernels", "benchmarks"])  # what our code asks of tensorrt
    for finding in check_uses(api, uses): print(finding)               # "export/to_trt.py:101: ... absent in 11.4"

Nothing here imports, dlopens or fakes TensorRT: the wheels are read as files. What is read, and how
far each reading can be trusted:

``tensorrt.so`` (pybind11 module, x86-64 ELF with its symbol table)
    pybind11 builds the Python names at import time from string literals passed by the binding
    functions (``tensorrt::bindCore(pybind11::module_&)`` etc.). Their docstring signatures are not
    in the file (pybind11 composes them at run time), so the names are recovered from the code:
    each binding function is scanned in address order (at every byte offset, no instruction
    decoder) for RIP-relative ``lea`` of identifier strings (with the register loaded), of
    ``typeinfo`` objects and of pybind11's static ``signature`` / ``types`` arrays, and for
    ``call`` targets. Calls into pybind11's ``class_<T>`` / ``enum_<T>`` / ``module_`` templates,
    ``cpp_function`` constructors and ``py::init`` (where GCC's LTO moved the name literal into a
    ``.constprop`` clone) are read in line, two levels deep, so the stream reads as the source did:
    ``class_<ICudaEngine>(m, "ICudaEngine")`` then ``.def("get_tensor_name", ...)``. Then:

    * a class or enum starts at ``generic_type::initialize`` (every ``class_``/``enum_``
      constructor calls it): its name is the identifier loaded since ``type_record()``; its C++
      type the ``typeinfo`` stored there (or the constructor's template argument ``T``); its bases
      the ``typeinfo`` passed (in rsi) to ``type_record::add_base``, or the constructor's other
      template arguments that are registered classes (a base from another library is loaded
      through the GOT, invisible to this scan);
    * a member is registered by ``add_class_method`` (methods, ``__init__``), ``def_property*`` /
      ``def_readonly`` / ``def_readwrite`` (properties), ``enum_<T>::value`` (enum values;
      ``export_values`` copies them into the enclosing class: ``ILogger.WARNING``, hence
      ``Logger.WARNING`` through the base class), ``module_::add_object`` (module functions). Its
      name is one of the identifiers loaded since the previous registration: the one just loaded
      into the argument register of an out-of-line pybind11 call, else one loaded more than once
      (the sibling lookup, the function record and the registration each load it), else the first
      in a callee-saved register, else the last not in rax (where py::arg names are built);
    * a member belongs to the class whose definition the stream is in, and also to the class ``T``
      of the ``class_<T>``/``enum_<T>`` template it went through (identical code folding can make
      that another class; both are kept, so a member is never lost, at the price of a few extra
      members: ``Severity.log``);
    * signatures: pybind11's ``"({%}, {int}) -> %"`` text with each ``%`` replaced by the Python
      name of the C++ type in the matching ``types`` slot (read from the dynamic relocations):
      ``create_network: (Builder, int) -> INetworkDefinition``. Overloads are kept. The arity is
      exact; defaults and keyword names are not recorded, so calls are checked for too many
      positional arguments only; return types type ``net = builder.create_network(...)``.

    How well this works is measured on every read: TensorRT keeps a few hundred docstrings as
    symbols named ``tensorrt::<Class>Doc::<member>``, loaded at their own registration; the chosen
    names agree with them in 88-97 % of those registrations (10.8 to 11.4; the rest are mostly
    overloads registered under a name loaded earlier, which the member's first overload already
    recorded). ``read_bindings`` raises ``ApiReadError`` (it never returns a silently wrong or
    empty API) below ``MIN_DOC_AGREEMENT`` or when a member of ``EXPECTED`` (members every
    release has) is not found: a stripped binary, another compiler or another pybind11 shows up
    there, not as "everything missing".

    Limits: an identifier loaded near a registration can be taken for another member's name
    (a py::arg name recorded as a member), which can hide a missing member of that very name;
    a few classes lose a base (``IIfConditionalOutputLayer``), so their inherited members would
    be reported missing (a visible false alarm, not a silent pass). Module-level constants
    (``trt.float32``) are every identifier the binding functions load, plus what
    ``tensorrt/__init__.py`` defines (``nptype``, ``__version__``): a misspelt module-level name
    equal to such an identifier passes. Nested classes attach to the class their C++ type is
    nested in.

``tensorrt_bindings/plugin/*.py`` (``tensorrt.plugin``), parsed with ``ast``
    Public names are those decorated ``@public_api()`` (or ``public_api(symbol=...)``); a block
    under ``if IS_AOT_ENABLED:`` counts only when the ``hasattr(trt, "...")`` it is defined as holds
    for this release's module. Classes keep methods, properties and ``self.x`` attributes, bases
    included; functions keep their parameters. ``_validate.py`` provides the rules for decorated
    plugin functions (``check_plugin_functions``): which validators exist, the fixed trailing
    parameters (``outputs, stream[, tactic]`` / ``outputs, tactic``), the serialisable attribute
    types, disallowed attribute names and the AOT return schema are read from it; the logic that
    applies them mirrors the file's (annotations required on ``register``, tensors first, impl
    parameters = tensors + a subset of attributes in registration order + the trailing ones).

The pip distribution ``tensorrt-cuNN`` (an sdist of a few kB) decides whether ``import
tensorrt.plugin`` works for a pip install: before 10.14 it has no ``tensorrt/plugin`` (containers and
tarballs do). ``read_bindings(wheel, meta=sdist)`` records that as ``plugin_in_pip``.

The project side (``project_uses``) is an AST scan; see its docstring for what it infers.
"""
from __future__ import annotations

import ast
import re
import struct
import tarfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ApiReadError", "Member", "PluginApi", "TrtApi", "Use", "Finding", "read_bindings", "read_pybind_module",
    "read_plugin_package", "project_uses", "check_uses", "check_plugin_functions", "release_key",
    "read_cuda_bindings", "CudaApi", "check_cuda", "check_polygraphy", "SCAN_DIRS",
]

SCAN_DIRS = ("runtime", "export", "kernels", "benchmarks")


class ApiReadError(Exception):
    """A wheel could not be read as expected (format changed): never an empty API."""


# ==============================================================================================
# ELF reading (x86-64, little endian): sections, symbols, C strings, dynamic relocations
# ==============================================================================================

class _Elf:
    def __init__(self, data: bytes):
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1 or struct.unpack_from("<H", data, 18)[0] != 62:
            raise ApiReadError("not a 64-bit little-endian x86-64 ELF file")
        self.data = data
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        hdrs = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        names = hdrs[shstrndx][4]
        # name -> (addr, offset, size)
        self.sections = {self._cstr_at(names + h[0]): (h[3], h[4], h[5]) for h in hdrs}
        if ".symtab" not in self.sections:
            raise ApiReadError("tensorrt.so has no symbol table (stripped): this reader needs it")
        self.funcs: dict[int, tuple[str, int]] = {}
        self.objects: dict[int, tuple[str, int]] = {}
        self._read_symbols(".symtab", ".strtab")
        self.dynsyms = self._dynsym_names()
        self.relocs = self._read_relocs()

    def _cstr_at(self, off: int) -> str:
        return self.data[off:self.data.index(b"\0", off)].decode("latin-1")

    def _read_symbols(self, tab: str, strtab: str) -> None:
        _, off, size = self.sections[tab]
        str_off = self.sections[strtab][1]
        for i in range(size // 24):
            st_name, st_info, _, _, value, sz = struct.unpack_from("<IBBHQQ", self.data, off + 24 * i)
            kind = st_info & 0xF
            if value and kind in (1, 2):
                table = self.funcs if kind == 2 else self.objects
                table.setdefault(value, (self._cstr_at(str_off + st_name), sz))

    def _dynsym_names(self) -> list[str]:
        if ".dynsym" not in self.sections:
            return []
        _, off, size = self.sections[".dynsym"]
        str_off = self.sections[".dynstr"][1]
        return [self._cstr_at(str_off + struct.unpack_from("<I", self.data, off + 24 * i)[0]) for i in range(size // 24)]

    def _read_relocs(self) -> dict[int, object]:
        """Address -> target: an int address (R_X86_64_RELATIVE) or a symbol name (R_X86_64_64)."""
        out: dict[int, object] = {}
        if ".rela.dyn" not in self.sections:
            return out
        _, off, size = self.sections[".rela.dyn"]
        for i in range(size // 24):
            r_offset, r_info, r_addend = struct.unpack_from("<QQq", self.data, off + 24 * i)
            rtype, sym = r_info & 0xFFFFFFFF, r_info >> 32
            if rtype == 8:  # R_X86_64_RELATIVE
                out[r_offset] = r_addend
            elif rtype == 1 and sym < len(self.dynsyms):  # R_X86_64_64
                out[r_offset] = self.dynsyms[sym]
        return out

    def in_section(self, name: str, addr: int) -> bool:
        a, _, size = self.sections.get(name, (0, 0, 0))
        return a <= addr < a + size

    def cstr(self, addr: int, section: str = ".rodata") -> str:
        a, off, _ = self.sections[section]
        return self._cstr_at(off + addr - a)

    def text_offset(self, addr: int) -> int:
        a, off, _ = self.sections[".text"]
        return off + addr - a


# ==============================================================================================
# pybind11 module: classes -> members
# ==============================================================================================

@dataclass
class Member:
    """One attribute of a class (or of the module): kind is method, property, enum, class or
    attribute; signatures are pybind11's, one per overload (methods and __init__ only)."""
    name: str
    kind: str
    signatures: list[str] = field(default_factory=list)
    params: list[list[str]] | None = None  # parameter names per overload (known for the Python plugin API)

    def max_positional(self) -> int | None:
        """Most positional arguments an overload takes (self included), None when unknown/unbounded."""
        counts = []
        for sig in self.signatures:
            inner = _signature_args(sig)
            if inner is None or any(a.startswith("*") for a in inner):
                return None
            counts.append(len(inner))
        return max(counts) if counts else None


def _signature_args(sig: str) -> list[str] | None:
    """The top-level argument list of "(a, {b}, c) -> r" (braces and brackets nest)."""
    if not sig.startswith("("):
        return None
    depth, cur, out = 0, "", []
    for ch in sig[1:]:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                if cur.strip():
                    out.append(cur.strip())
                return out
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return None


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# RIP-relative lea (REX.W 8D, modrm 00 reg 101) and call rel32, matched at every offset (a linear
# scan without an instruction decoder: an E8 or 48 8D byte inside another instruction must not hide
# the real instruction that starts in its tail; stray matches rarely land on a string or a function)
_EVENT = re.compile(rb"(?=(?P<lea>[\x48\x4c]\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d])(?P<ld>.{4})|\xe8(?P<cd>.{4}))", re.S)
_BIND_FN = re.compile(r"_ZN8tensorrt\d+bind\w+ERN8pybind117module_E\Z")  # tensorrt::bindX(pybind11::module_&)
_FOLLOW = ("_ZN8pybind116class_I", "_ZN8pybind115enum_I", "_ZN8pybind117module_", "_ZN8pybind1112cpp_functionC",
           "_ZNO8pybind116detail8initimpl", "_ZN8pybind116detail8initimpl")  # the last two: py::init(...).execute
_RSI, _RDX = 6, 2
_CALLEE_SAVED = (3, 5, 12, 13, 14, 15)  # rbx, rbp, r12-r15


def _doc_symbol(name: str) -> tuple[str, str] | None:
    """tensorrt::<Class>Doc::<member> (a docstring variable) -> (Class, member)."""
    m = re.match(r"_ZN8tensorrt(\d+)", name)
    if not m:
        return None
    i = m.end()
    scope = name[i:i + int(m.group(1))]
    m2 = re.match(r"L?(\d+)", name[i + len(scope):])
    if not scope.endswith("Doc") or not m2:
        return None
    j = i + len(scope) + m2.end()
    member = name[j:j + int(m2.group(1))]
    return (scope[:-3], member) if name[j + len(member):j + len(member) + 1] == "E" else None
_INTERNAL_STRING = re.compile(r"_?_?pybind11")  # pybind11's own attribute names ("_pybind11_conduit_v1_", ...)


def _mangled_type(s: str, i: int) -> tuple[tuple[str, ...] | None, int]:
    """Parse one simple mangled type at s[i:] ("N8nvinfer17ILayerE" or "8DataType"): its name
    components and the index after it; (None, i) for anything else (templates, substitutions)."""
    def ident(j):
        m = re.match(r"\d+", s[j:])
        if not m:
            return None, j
        n, j = int(m.group()), j + len(m.group())
        return s[j:j + n], j + n
    if i < len(s) and s[i] == "N":
        parts, j = [], i + 1
        while j < len(s) and s[j] != "E":
            name, j2 = ident(j)
            if name is None:
                return None, i
            parts.append(name)
            j = j2
        return (tuple(p for p in parts if not re.fullmatch(r"v_\d+_\d+", p)), j + 1) if parts else (None, i)
    name, j = ident(i)
    return ((name,), j) if name else (None, i)


def _template_type(symbol: str) -> tuple[str, ...] | None:
    """T of a pybind11 class_<T, ...> / enum_<T> member's mangled name."""
    for prefix in ("_ZN8pybind116class_I", "_ZN8pybind115enum_I"):
        if symbol.startswith(prefix):
            return _mangled_type(symbol, len(prefix))[0]
    if "8initimpl" in symbol and "6class_I" in symbol:  # py::init<...>().execute(class_<T>&): T's __init__
        return _mangled_type(symbol, symbol.index("6class_I") + len("6class_I"))[0]
    return None


def _template_options(symbol: str) -> list[tuple[str, ...]]:
    """Every simple nested type named in a class_<T, options...> constructor's template arguments
    (before the constructor's own parameters): candidates for base classes."""
    head = re.split(r"EE(?:C[12]I|\d+def)", symbol, maxsplit=1)[0]
    out = []
    for m in re.finditer(r"N\d", head):
        t, _ = _mangled_type(head, m.start())
        if t and t not in out:
            out.append(t)
    return out


def _typeinfo_type(symbol: str) -> tuple[str, ...] | None:
    return _mangled_type(symbol, 4)[0] if symbol.startswith("_ZTI") else None


@dataclass
class _Frame:
    """What ``_PybindReader._walk`` has read of one function since its last registration."""
    arg_name: str | None  # the name literal the caller passed (an out-of-line pybind11 template's argument)
    names: list = field(default_factory=list)  # identifier strings since the last registration, with their register
    window: list | None = None  # a class definition: strings and typeinfos since type_record()
    sig: str | None = None
    types: tuple | None = None
    doc: str | None = None
    fresh: dict = field(default_factory=dict)  # register -> literal loaded since the last call: that call's argument
    calls: int = 0  # calls so far in this frame: a register loaded since the last call is an argument

    def name_for(self, register: int = _RSI, argument: bool = False) -> str | None:
        """The registered name among the literals loaded since the last registration. GCC loads
        py::arg names into rax to store them; a name passed to an out-of-line pybind11 call is
        loaded straight into its argument register (``argument``); a name used two or three
        times in line (sibling lookup, function record, add_class_method) goes into a
        callee-saved register first, or is loaded again for each use. So: for a call's argument,
        the literal just loaded into its register; then a literal loaded more than once; then
        the first literal in a callee-saved register; then the last one not
        in rax; then the last one; then the caller's argument."""
        own = [(s, r) for s, r in self.names if not _INTERNAL_STRING.match(s)]
        if argument and self.fresh.get(register):
            return self.fresh[register]
        counts = {s: sum(1 for t, _ in own if t == s) for s, _ in own}
        repeated = [s for s, _ in own if counts[s] >= 2 and counts[s] == max(counts.values())]
        if repeated:  # loaded for each of its uses
            return repeated[0]
        kept = [s for s, r in own if r in _CALLEE_SAVED]
        if kept:
            return kept[0]
        if self.fresh.get(register):
            return self.fresh[register]
        not_rax = [s for s, r in own if r != 0]
        return (not_rax or [s for s, _ in own] or [self.arg_name])[-1]

    def mark_base(self) -> None:
        """type_record::add_base(record, typeid(Base) in rsi, caster): the typeinfo loaded into rsi
        for this call (else the last one) names a base."""
        tis = [i for i, e in enumerate(self.window) if e[0] == "ti"]
        in_rsi = [i for i in tis if self.window[i][2] == _RSI and self.window[i][3] == self.calls - 1]
        pick = (in_rsi or tis or [None])[-1]
        if pick is not None:
            self.window[pick] = ("base", self.window[pick][1])

    def class_definition(self) -> tuple[str | None, list, list]:
        """At generic_type::initialize: (the class's name, the typeinfos, the bases) read since type_record()."""
        window = self.window or []
        strings = [e[1] for e in window if e[0] == "str" and not _INTERNAL_STRING.match(e[1])]
        tis = [e[1] for e in window if e[0] == "ti"]
        bases = [e[1] for e in window if e[0] == "base" and e[1]]
        return strings[-1] if strings else self.name_for(-1), tis, bases


class _PybindReader:
    """Walks the binding functions' code (see the module docstring) and collects the API."""

    def __init__(self, elf: _Elf):
        self.elf = elf
        self.classes: dict[str, dict[str, Member]] = {}
        self.bases: dict[str, list[tuple[str, ...]]] = {}
        self.cpp_to_py: dict[tuple[str, ...], str] = {}
        self.py_to_cpp: dict[str, tuple[str, ...]] = {}
        self.module_strings: set[str] = set()
        self.current: str | None = None
        self.enum_values: dict[str, set[str]] = {}
        self.raw_signatures: dict[int, list] = {}  # id(Member) -> [(signature text, types array)]
        self.signed: list[Member] = []
        self.doc_checks: list = []
        self.module_members: dict[str, Member] = {}
        self.registrations = 0

    def finish(self) -> None:
        """Render the signatures once every class name is known."""
        for m in self.signed:
            for sig, types in self.raw_signatures.pop(id(m), []):
                text = self._render(sig, types)
                if text not in m.signatures:
                    m.signatures.append(text)
        self.signed = []

    # -- the event stream ---------------------------------------------------------------------
    def events(self, addr: int, size: int):
        """One function's code in address order: ("str", s, register) | ("ti", type, register) |
        ("sig", text) | ("types", addr, size) | ("doc", class, member) | ("call", symbol, addr, size)."""
        elf, data = self.elf, self.elf.data
        text_addr, text_off, _ = elf.sections[".text"]
        start = elf.text_offset(addr)
        for m in _EVENT.finditer(data, start, start + size):
            disp, = struct.unpack("<i", m.group("ld") or m.group("cd"))
            target = text_addr + (m.start() + (7 if m.group("lea") else 5) - text_off) + disp
            if m.group("lea"):
                obj = elf.objects.get(target)
                if obj is not None:
                    name = obj[0]
                    if name.startswith("_ZTI"):
                        lea = m.group("lea")
                        yield ("ti", _typeinfo_type(name), ((lea[2] >> 3) & 7) + (8 if lea[0] & 4 else 0))
                    elif name.endswith("E9signature") and elf.in_section(".rodata", target):
                        yield ("sig", elf.cstr(target))
                    elif name.endswith("E5types"):
                        yield ("types", target, obj[1])
                    else:
                        doc = _doc_symbol(name)
                        if doc:  # tensorrt::<Class>Doc::<member>, the docstring passed to this def
                            yield ("doc",) + doc
                elif elf.in_section(".rodata", target):
                    s = elf.cstr(target)
                    if _IDENT.match(s):  # which register it lands in: rsi/rdx carry a callee's name argument
                        lea = m.group("lea")
                        yield ("str", s, ((lea[2] >> 3) & 7) + (8 if lea[0] & 4 else 0))
            elif target in elf.funcs:
                symbol, fsize = elf.funcs[target]
                yield ("call", symbol, target, fsize)

    # -- interpretation -----------------------------------------------------------------------
    def read(self) -> None:
        binders = sorted((a, s) for a, (n, s) in self.elf.funcs.items() if _BIND_FN.match(n))
        if not binders:
            raise ApiReadError("no tensorrt::bind*(pybind11::module_&) functions in the symbol table")
        for addr, size in binders:
            self._walk(addr, size, None, None, ())

    def _walk(self, addr: int, size: int, arg_name: str | None, template: tuple | None, stack: tuple,
              ctor_options: list | None = None) -> None:
        """Interpret one function. ``arg_name``: the name literal its caller passed (a pybind11
        template called out of line receives the name as an argument); ``template``: T when this
        is a class_<T>/enum_<T> member."""
        frame = _Frame(arg_name)
        for ev in self.events(addr, size):
            if ev[0] == "call":
                frame.calls += 1
                self._call(frame, ev[1], ev[2], ev[3], template, stack, ctor_options)
                frame.fresh = {}
            else:
                self._literal(frame, ev)

    def _literal(self, frame: _Frame, ev: tuple) -> None:
        """A string, typeinfo, signature, docstring or types array the function loads."""
        kind = ev[0]
        if kind == "str":
            self.module_strings.add(ev[1])
            frame.names.append((ev[1], ev[2]))
            if not _INTERNAL_STRING.match(ev[1]):
                frame.fresh[ev[2]] = ev[1]
            if frame.window is not None:
                frame.window.append(("str", ev[1]))
        elif kind == "ti":
            if frame.window is not None:  # None: a typeinfo the reader cannot name (a local class)
                frame.window.append(("ti", ev[1], ev[2], frame.calls))
        elif kind == "sig":
            frame.sig = ev[1]
        elif kind == "doc":
            frame.doc = ev[2]
        elif kind == "types":
            frame.types = (ev[1], ev[2])

    def _call(self, frame: _Frame, symbol: str, target: int, fsize: int, template: tuple | None, stack: tuple,
              ctor_options: list | None) -> None:
        """A call: a pybind11 registration (class, method, property, enum value, module function),
        or a pybind11 template to read in turn."""
        if "type_recordC" in symbol:
            frame.window = []
        elif "8add_base" in symbol and frame.window:
            frame.mark_base()
        elif "generic_type10initialize" in symbol:
            self._define_class(*frame.class_definition(), template, ctor_options)
            frame.window, frame.names = None, []
        elif "16add_class_method" in symbol:
            self._check_doc(frame.doc, frame.name_for(), frame.names)
            self._add(frame.name_for(), "method", frame.sig, frame.types, template)
            if frame.doc and frame.doc != frame.name_for():  # the docstring's own name: a member of this class too
                self._add(frame.doc, "method", None, None, template)
            frame.names, frame.sig, frame.types, frame.doc = [], None, None, None
        elif "def_property_static_impl" in symbol:
            self._check_doc(frame.doc, frame.name_for(), frame.names)
            self._add(frame.name_for(), "property", None, None, template)
            frame.names, frame.doc = [], None
        elif symbol.startswith("_ZN8pybind115enum_I") and "5valueEPKc" in symbol:
            self._check_doc(frame.doc, frame.name_for(argument=True), frame.names)
            self._add(frame.name_for(argument=True), "enum", None, None, _template_type(symbol))
            frame.names, frame.doc = [], None
        elif "13export_valuesEv" in symbol:
            self._export_values()
        elif _followed(symbol) and target not in stack and len(stack) < 2:
            self._follow(frame, symbol, target, fsize, stack)
        elif symbol.startswith("_ZN8pybind117module_10add_object"):  # m.def(name, f): a module function
            name = frame.name_for()
            if name:
                m = self.module_members.setdefault(name, Member(name, "function"))
                if frame.sig:
                    self.raw_signatures.setdefault(id(m), []).append((frame.sig, frame.types))
                    self.signed.append(m)
            frame.names, frame.sig, frame.types = [], None, None

    def _follow(self, frame: _Frame, symbol: str, target: int, fsize: int, stack: tuple) -> None:
        """Read a pybind11 template called out of line (class_<T>::def, a constructor, ...), passing it
        the name literal loaded for it; a definition registered deeper than the reader goes is
        registered by that name."""
        if not _is_ctor(symbol) and symbol.startswith("_ZN8pybind116class_I"):
            self._bases_from_member(symbol)
        passed = frame.name_for(_RDX if _is_ctor(symbol) else _RSI, argument=True)
        before = self.registrations
        self._walk(target, fsize, passed, _template_type(symbol), stack + (target,),
                   _template_options(symbol) if _is_ctor(symbol) else None)
        defines = _definition_kind(symbol)
        if defines and self.registrations == before:  # registered deeper than we read: by its name argument
            self._add(passed, defines, None, None, _template_type(symbol))
        frame.doc = None
        if not _is_ctor(symbol):
            frame.names = []
        frame.sig = frame.types = None

    def _check_doc(self, doc, name, names):
        """Keep (docstring's member name, chosen name): their agreement measures the reading."""
        self.doc_checks.append((doc, name, list(names)))

    def _define_class(self, name: str | None, tis: list, bases: list, own: tuple | None, options: list | None) -> None:
        """A class_/enum_ definition: the typeinfo stored as the record's type (else the template's
        T) and those passed to type_record::add_base. A constructor's other template arguments may
        name bases too (an external base's typeinfo is loaded through the GOT, not by lea): they
        are kept when they turn out to be classes."""
        if not name or _INTERNAL_STRING.match(name):
            return
        if options is not None:  # inside class_<T, options...>'s constructor: T is known (None: a local class)
            cpp, candidates = own, bases + options
        else:  # written out in the binding function
            cpp, candidates = (tis[0] if tis else own), bases
        self.classes.setdefault(name, {})
        known = self.bases.setdefault(name, [])
        known += [b for b in candidates if b and b not in known and b != cpp]
        if cpp:
            self.cpp_to_py.setdefault(cpp, name)
            self.py_to_cpp.setdefault(name, cpp)
            parent = self.cpp_to_py.get(cpp[:-1]) if len(cpp) > 1 else None
            if parent and parent != name:  # a nested class (ILogger.Severity)
                self.classes[parent].setdefault(name, Member(name, "class"))
        self.current = name

    def _bases_from_member(self, symbol: str) -> None:
        """class_<T, Base>::def(...) written out in line after the class: its template arguments
        name the base when the definition window showed none (a local T, an external base)."""
        name = self.current
        if name is None or self.bases.get(name):
            return
        own = _template_type(symbol)
        if own != self.py_to_cpp.get(name):  # another class's member (identical code folding shares them)
            return
        self.bases[name] = [t for t in _template_options(symbol) if t != own]

    def _add(self, name, kind, sig, types, template) -> None:
        if not name or self.current is None and template is None:
            return
        self.registrations += 1
        owners = {self.current} if self.current else set()
        if template and template in self.cpp_to_py:
            owners.add(self.cpp_to_py[template])
        for owner in owners:
            members = self.classes.setdefault(owner, {})
            m = members.setdefault(name, Member(name, kind))
            if sig and (sig, types) not in self.raw_signatures.setdefault(id(m), []):
                self.raw_signatures[id(m)].append((sig, types))
                self.signed.append(m)
            if kind == "enum":
                self.enum_values.setdefault(owner, set()).add(name)

    def _export_values(self) -> None:
        """enum_.export_values(): the values also become attributes of the enclosing scope."""
        name = self.current
        cpp = self.py_to_cpp.get(name)
        parent = self.cpp_to_py.get(cpp[:-1]) if cpp and len(cpp) > 1 else None
        for value in self.enum_values.get(name, ()):
            if parent:
                self.classes[parent].setdefault(value, Member(value, "enum"))
            else:
                self.module_strings.add(value)

    def _render(self, sig: str, types) -> str:
        """pybind11's signature text with each % replaced by the Python name of its type."""
        names = []
        if types:
            addr, size = types
            for i in range(size // 8):
                target = self.elf.relocs.get(addr + 8 * i)
                sym = self.elf.objects.get(target, ("",))[0] if isinstance(target, int) else (target or "")
                cpp = _typeinfo_type(sym) if sym else None
                names.append(self.cpp_to_py.get(cpp, "::".join(cpp)) if cpp else "?")
        it = iter(names)
        sig = re.sub(r"@[^@]*@([^@]*)@", r"\1", sig)  # pybind11 3's "@typing.SupportsInt@int@" -> "int"
        return re.sub(r"%", lambda _: next(it, "?"), sig).replace("{", "").replace("}", "")


def _definition_kind(symbol: str) -> str | None:
    """What a class_<T>::def* call registers: "method" (def, def_static) or "property"."""
    m = re.search(r"EE\d+(def\w*?)I", symbol) if symbol.startswith("_ZN8pybind116class_I") else None
    if not m:
        return None
    return "property" if "property" in m.group(1) or "read" in m.group(1) else "method"


def _is_ctor(symbol: str) -> bool:
    return symbol.startswith(("_ZN8pybind116class_I", "_ZN8pybind115enum_I")) and re.search(r"EEC[12]I", symbol) is not None


def _followed(symbol: str) -> bool:
    """Calls whose code is read in line: pybind11's class_/enum_/module_ definitions (def*, value
    excluded: its name is the caller's) and cpp_function constructors, where the literals live."""
    if not symbol.startswith(_FOLLOW) or "5valueEPKc" in symbol:
        return False
    return (symbol.startswith(("_ZN8pybind1112cpp_functionC", "_ZN8pybind117module_3def", "_ZNO8pybind116detail8initimpl",
                               "_ZN8pybind116detail8initimpl")) or _is_ctor(symbol)
            or re.search(r"E\d+def", symbol) is not None)


@dataclass
class PybindModule:
    """What ``read_pybind_module`` recovers from tensorrt.so."""
    classes: dict[str, dict[str, Member]]
    bases: dict[str, list[str]]
    functions: dict[str, Member]  # m.def(...) module functions, with signatures
    strings: set[str]  # every identifier literal the binding code loads (module-level names, leniently)
    doc_agreement: float  # share of registrations carrying a tensorrt::XDoc::name docstring whose name we agree with


def read_pybind_module(so_bytes: bytes) -> PybindModule:
    reader = _PybindReader(_Elf(so_bytes))
    reader.read()
    reader.finish()
    bases = {name: list(dict.fromkeys(reader.cpp_to_py[b] for b in bs if b in reader.cpp_to_py and reader.cpp_to_py[b] != name))
             for name, bs in reader.bases.items()}
    with_doc = [(doc, name) for doc, name, _ in reader.doc_checks if doc]
    agreement = sum(doc == name for doc, name in with_doc) / len(with_doc) if with_doc else 1.0
    return PybindModule(reader.classes, bases, reader.module_members, reader.module_strings, agreement)


# ==============================================================================================
# tensorrt.plugin (pure Python in the wheel), read with ast
# ==============================================================================================

@dataclass
class PluginApi:
    """``tensorrt.plugin`` of one release: public names, classes with members, validation rules."""
    names: dict[str, Member]  # public_api names: kind class / function / module
    classes: dict[str, dict[str, Member]]  # every class in the package -> members (bases merged)
    bases: dict[str, list[str]]
    rules: dict  # read from _validate.py (see _validation_rules)
    flags: dict[str, bool]  # IS_AOT_ENABLED = hasattr(trt, "...") evaluated for this release


def _function_params(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    params = [p.arg for p in a.posonlyargs + a.args]
    if a.vararg:
        params.append("*" + a.vararg.arg)
    params += [p.arg + "=" for p in a.kwonlyargs]  # keyword-only: marked with "="
    if a.kwarg:
        params.append("**" + a.kwarg.arg)
    return params


def _function_member(fn: ast.FunctionDef, kind: str = "function", drop_first: bool = False) -> Member:
    params = _function_params(fn)
    if drop_first and params and not params[0].startswith("*"):
        params = params[1:]
    return Member(fn.name, kind, ["(" + ", ".join(params) + ")"], [params])


def _decorator_names(node) -> list[str]:
    out = []
    for d in getattr(node, "decorator_list", []):
        target = d.func if isinstance(d, ast.Call) else d
        if isinstance(target, ast.Name):
            out.append(target.id)
        elif isinstance(target, ast.Attribute):
            out.append(target.attr)
    return out


def _public_symbol(node) -> str | None:
    """``@public_api()`` / ``@public_api(symbol="x")`` on a def or class: the exported name."""
    for d in getattr(node, "decorator_list", []):
        if isinstance(d, ast.Call) and isinstance(d.func, ast.Name) and d.func.id == "public_api":
            for kw in d.keywords:
                if kw.arg == "symbol" and isinstance(kw.value, ast.Constant):
                    return kw.value.value
            return node.name
    return None


def _class_members(cls: ast.ClassDef) -> dict[str, Member]:
    members: dict[str, Member] = {}
    for item in cls.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            decos = _decorator_names(item)
            if "property" in decos or "setter" in decos:
                members.setdefault(item.name, Member(item.name, "property"))
            else:
                static = "staticmethod" in decos
                m = _function_member(item, "method", drop_first=not static)
                if item.name in members and members[item.name].kind == "method":
                    members[item.name].signatures += m.signatures
                    members[item.name].params += m.params
                else:
                    members[item.name] = m
            for sub in ast.walk(item):  # self.x = ... in any method
                if isinstance(sub, (ast.Assign, ast.AnnAssign)):
                    targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                    for t in targets:
                        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                            members.setdefault(t.attr, Member(t.attr, "attribute"))
        elif isinstance(item, ast.Assign):
            for t in item.targets:
                if isinstance(t, ast.Name):
                    members.setdefault(t.id, Member(t.id, "attribute"))
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            members.setdefault(item.target.id, Member(item.target.id, "attribute"))
        elif isinstance(item, ast.ClassDef):
            members[item.name] = Member(item.name, "class")
    return members


def _hasattr_flags(trees: dict[str, ast.Module], module_names) -> dict[str, bool]:
    """NAME = hasattr(trt, "X") anywhere in the package -> whether this release has X."""
    flags = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                    and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name) \
                    and node.value.func.id == "hasattr" and len(node.value.args) == 2 \
                    and isinstance(node.value.args[1], ast.Constant):
                flags[node.targets[0].id] = node.value.args[1].value in module_names
    return flags


def _live_statements(body: list, flags: dict[str, bool]):
    """Top-level statements, entering ``if FLAG:`` blocks by the flag's value for this release."""
    for node in body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id in flags:
            yield from _live_statements(node.body if flags[node.test.id] else node.orelse, flags)
        else:
            yield node


def read_plugin_package(sources: dict[str, str], module_names) -> PluginApi:
    """``tensorrt_bindings/plugin/*.py`` sources (file name -> text) -> PluginApi."""
    with warnings.catch_warnings():  # NVIDIA's sources have invalid escape sequences in docstrings
        warnings.simplefilter("ignore")
        trees = {name: ast.parse(text, filename=name) for name, text in sources.items()}
    flags = _hasattr_flags(trees, module_names)
    names: dict[str, Member] = {}
    classes: dict[str, dict[str, Member]] = {}
    bases: dict[str, list[str]] = {}
    for tree in trees.values():
        for node in _live_statements(tree.body, flags):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = _class_members(node)
                bases[node.name] = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
                symbol = _public_symbol(node)
                if symbol:
                    names[symbol] = Member(symbol, "class")
            elif isinstance(node, ast.FunctionDef):
                symbol = _public_symbol(node)
                if symbol:
                    member = _function_member(node)
                    member.name = symbol
                    names[symbol] = member
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):  # public_api(symbol="op")(op)
                inner = node.value.func
                if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id == "public_api":
                    for kw in inner.keywords:
                        if kw.arg == "symbol" and isinstance(kw.value, ast.Constant):
                            names[kw.value.value] = Member(kw.value.value, "module")
    # merge members of base classes defined in the package (ShapeExpr(SymInt32) gets SymIntExpr's operators)
    def merged(name, seen=()):
        out = {}
        for base in bases.get(name, []):
            if base in classes and base not in seen:
                out.update(merged(base, seen + (name,)))
        out.update(classes.get(name, {}))
        return out
    classes = {name: merged(name) for name in classes}
    rules = _validation_rules(trees.get("_validate.py"))
    return PluginApi(names, classes, bases, rules, flags)


def _string_constants(node) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _validation_rules(tree: ast.Module | None) -> dict:
    """What ``_validate.py`` demands, read from its source:

    {"validators": {"impl": {"tail": ["outputs", "stream"], "optional_tail": ["tactic"]}, "aot_impl": ...},
     "serializable": ["int", ...], "disallowed_attrs": [...], "reserved_namespaces": [...],
     "aot_return": "tuple[str | bytes, ...]"}"""
    rules = {"validators": {}, "serializable": [], "disallowed_attrs": [], "reserved_namespaces": [], "aot_return": None}
    if tree is None:
        return rules
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
            if target == "SERIALIZABLE_BUILTIN_TYPES" and isinstance(value, ast.Tuple):
                rules["serializable"] = [e.id for e in value.elts if isinstance(e, ast.Name)]
            elif target == "DISALLOWED_ATTR_NAMES":
                rules["disallowed_attrs"] = _string_constants(value)
            elif target == "RESERVED_NAMESPACES":
                rules["reserved_namespaces"] = _string_constants(value)
        elif isinstance(node, ast.FunctionDef) and node.name.startswith("_validate_") and node.name != "_validate_name_and_namespace":
            kind = node.name[len("_validate_"):]
            tail, optional = [], []
            for sub in ast.walk(node):
                if isinstance(sub, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "expected_schema" for t in sub.targets):
                    tail += _schema_names(_string_constants(sub.value))
                elif isinstance(sub, ast.AugAssign) and isinstance(sub.target, ast.Name) and sub.target.id == "expected_schema":
                    optional += _schema_names(_string_constants(sub.value))
                elif isinstance(sub, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "expected_return_schema" for t in sub.targets):
                    rules["aot_return"] = (_string_constants(sub.value) or [None])[0]
            rules["validators"][kind] = {"tail": tail, "optional_tail": optional}
    return rules


def _schema_names(chunks: list[str]) -> list[str]:
    """The fixed parameter names in "(" + ... + ", outputs, stream" style chunks."""
    return [n for chunk in chunks for n in re.findall(r"[A-Za-z_]\w*", chunk)]


# ==============================================================================================
# A release: the bindings wheel (+ the tensorrt-cuNN sdist for ``import tensorrt.plugin``)
# ==============================================================================================

# Members every release since 10.0 has: reading fails loudly unless they are all found (a changed
# compiler or a stripped binary must not turn into "everything missing" or "nothing to check").
EXPECTED = {
    "Builder": ("create_network", "create_builder_config", "build_serialized_network", "__init__"),
    "ICudaEngine": ("get_tensor_name", "get_tensor_mode", "num_io_tensors", "create_execution_context"),
    "IExecutionContext": ("set_input_shape", "set_tensor_address", "execute_async_v3"),
    "OnnxParser": ("parse_from_file", "get_error", "num_errors"),
    "DataType": ("FLOAT", "HALF", "INT8"),
    "ILogger": ("Severity", "log"),
}
MIN_DOC_AGREEMENT = 0.8


@dataclass
class TrtApi:
    """One TensorRT release's Python API (see the module docstring for how it is read)."""
    release: str
    classes: dict[str, dict[str, Member]]
    bases: dict[str, list[str]]
    functions: dict[str, Member]  # module functions with signatures (pybind11 m.def and tensorrt/__init__.py)
    module_names: set[str]  # every module-level name: classes, functions, constants (lenient, see docstring)
    plugin: PluginApi | None
    plugin_in_pip: bool | None  # does the tensorrt-cuNN pip package ship tensorrt/plugin? None: not read
    doc_agreement: float
    wheel: str = ""

    def member(self, cls: str, name: str) -> Member | None:
        """A class's member, base classes included."""
        seen, todo = set(), [cls]
        while todo:
            c = todo.pop(0)
            if c in seen:
                continue
            seen.add(c)
            m = self.classes.get(c, {}).get(name)
            if m is not None:
                return m
            todo += self.bases.get(c, [])
        return None

    def module_member(self, name: str) -> Member | None:
        if name in self.classes:
            return Member(name, "class")
        if name in self.functions:
            return self.functions[name]
        return Member(name, "attribute") if name in self.module_names else None


def release_key(release: str) -> tuple[int, ...]:
    """"10.14.1.48.post1" -> (10, 14, 1, 48): for ordering and minimum checks."""
    return tuple(int(p) for p in re.findall(r"\d+", release.split(".post")[0]))


def _init_names(source: str) -> tuple[dict[str, Member], str | None]:
    """Names tensorrt_bindings/__init__.py defines at module level (nptype, __version__, ...)."""
    tree = ast.parse(source)
    out: dict[str, Member] = {}
    version = None
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node in tree.body:
            out[node.name] = _function_member(node)
        elif isinstance(node, ast.ClassDef) and node in tree.body:
            out[node.name] = Member(node.name, "class")
        elif isinstance(node, ast.Assign) and node in tree.body:
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out.setdefault(t.id, Member(t.id, "attribute"))
                    if t.id == "__version__" and isinstance(node.value, ast.Constant):
                        version = str(node.value.value)
    return out, version


def read_bindings(wheel_path, meta_path=None) -> TrtApi:
    """Read a tensorrt-cuNN-bindings wheel (and optionally the tensorrt-cuNN sdist or wheel, which
    says whether ``import tensorrt.plugin`` works for a pip install). Raises ApiReadError when the
    wheel cannot be read as expected."""
    wheel_path = Path(wheel_path)
    try:
        zf = zipfile.ZipFile(wheel_path)
    except (OSError, zipfile.BadZipFile) as e:
        raise ApiReadError(f"{wheel_path}: not a wheel ({e})") from None
    with zf:
        files = zf.namelist()
        so = next((f for f in files if re.fullmatch(r"tensorrt_bindings/tensorrt[^/]*\.so", f)), None)
        if so is None:
            raise ApiReadError(f"{wheel_path.name}: no tensorrt_bindings/tensorrt*.so (Linux x86-64 wheels only)")
        pybind = read_pybind_module(zf.read(so))
        init_names, version = _init_names(zf.read("tensorrt_bindings/__init__.py").decode())
        plugin_sources = {f.rsplit("/", 1)[1]: zf.read(f).decode()
                          for f in files if re.fullmatch(r"tensorrt_bindings/plugin/[^/]+\.py", f)}
    release = version or wheel_path.name.split("-")[1]
    module_names = set(pybind.classes) | set(pybind.functions) | pybind.strings | set(init_names)
    functions = dict(pybind.functions)
    functions.update({n: m for n, m in init_names.items() if m.kind == "function"})
    plugin = read_plugin_package(plugin_sources, module_names) if plugin_sources else None
    api = TrtApi(release, pybind.classes, pybind.bases, functions, module_names, plugin,
                 _plugin_in_pip(meta_path) if meta_path else None, pybind.doc_agreement, wheel_path.name)
    _check_expected(api)
    return api


def _check_expected(api: TrtApi) -> None:
    lost = [f"{c}.{m}" for c, ms in EXPECTED.items() for m in ms if api.member(c, m) is None]
    if lost:
        raise ApiReadError(f"{api.wheel}: the reader lost members every release has ({', '.join(lost)}): "
                           "the binary's layout changed; see tests/trt_api.py's docstring")
    if api.doc_agreement < MIN_DOC_AGREEMENT:
        raise ApiReadError(f"{api.wheel}: member names agree with TensorRT's docstring symbols in only "
                           f"{100 * api.doc_agreement:.0f} % of registrations (< {100 * MIN_DOC_AGREEMENT:.0f} %)")


def _plugin_in_pip(meta_path) -> bool:
    """Does the tensorrt-cuNN distribution (sdist .tar.gz or wheel) ship tensorrt/plugin/__init__.py?"""
    meta_path = Path(meta_path)
    if meta_path.suffix == ".whl":
        with zipfile.ZipFile(meta_path) as zf:
            names = zf.namelist()
    else:
        with tarfile.open(meta_path) as tf:
            names = tf.getnames()
    return any(re.search(r"(^|/)tensorrt/plugin/__init__\.py$", n) for n in names)


# ==============================================================================================
# The project's uses (AST scan)
# ==============================================================================================

@dataclass(frozen=True)
class Use:
    """One name the project asks of tensorrt / tensorrt.plugin / cuda-python / Polygraphy.

    ``owner`` is () for a module-level name, else a type path resolved per release: ("Builder",)
    the class Builder (or an instance of it when ``instance``), ("ILogger", "Severity") a nested
    class, ("Builder", "create_network()") what Builder.create_network returns. ``call``:
    (positional argument count, or None with *args; keyword names) when the name is called."""
    path: str
    line: int
    module: str
    owner: tuple
    name: str
    expr: str
    call: tuple | None = None
    instance: bool = False
    optional: str = ""
    kind: str = "attr"  # "attr" | "import"
    min_release: tuple = ()  # TENSORRT_MIN_VERSION declared by the file: older releases are not claimed

    def where(self) -> str:
        return f"{self.path}:{self.line}"


MODULE_NAMES = {  # the project's names for these modules, wherever they are bound (param, self._x, x = f())
    "trt": "tensorrt", "trtp": "tensorrt.plugin", "cudart": "cuda.runtime", "drv": "cuda.driver",
}
INSTANCE_NAMES = {  # variables / self attributes named so hold instances of these classes (when not assigned otherwise)
    "builder": "Builder", "network": "INetworkDefinition", "net": "INetworkDefinition", "parser": "OnnxParser",
    "engine": "ICudaEngine", "context": "IExecutionContext", "runtime": "Runtime",
}
IMPORTS = {  # import path -> module key
    "tensorrt": "tensorrt", "tensorrt.plugin": "tensorrt.plugin",
    "cuda.bindings.runtime": "cuda.runtime", "cuda.cudart": "cuda.runtime",
    "cuda.bindings.driver": "cuda.driver", "cuda.cuda": "cuda.driver",
}
_GUARD_ATTR = {"AttributeError", "Exception", "BaseException"}
_GUARD_IMPORT = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
_GUARD_CALL = {"TypeError", "Exception", "BaseException"}


class _Scanner:
    """Walks one file. Values are (kind, module, path): kind "module" / "class" (a class or a
    class-level attribute) / "member" (an instance attribute) / "inst" (an instance)."""

    def __init__(self, path: str, text: str):
        self.path, self.text = path, text
        self.tree = ast.parse(text, filename=path)
        self.uses: list[Use] = []
        self.aliases: dict[str, tuple] = {}
        self.min_release = self._declared_minimum()
        self._collect_imports()

    # -- names bound to the modules -----------------------------------------------------------
    def _declared_minimum(self) -> tuple:
        for node in self.tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "TENSORRT_MIN_VERSION"
                                                    for t in node.targets):
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    return ()
                return release_key(value) if isinstance(value, str) else tuple(int(v) for v in value)
        return ()

    def _module_key(self, dotted: str) -> str | None:
        if dotted in IMPORTS:
            return IMPORTS[dotted]
        if dotted == "polygraphy" or dotted.startswith("polygraphy."):
            return dotted
        return None

    def _collect_imports(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    key = self._module_key(a.name)
                    if key:
                        self.aliases[a.asname or a.name.split(".")[0]] = ("module", key if a.asname else self._module_key(a.name.split(".")[0]) or key, ())
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                for a in node.names:
                    sub = self._module_key(f"{base}.{a.name}")
                    if sub and not sub.startswith("polygraphy"):  # from cuda.bindings import runtime
                        self.aliases[a.asname or a.name] = ("module", sub, ())
                    elif self._module_key(base):  # from tensorrt import Builder / from polygraphy.x import Y
                        self.aliases[a.asname or a.name] = ("class", self._module_key(base), (a.name,))

    # -- recording ----------------------------------------------------------------------------
    def _use(self, node, module, owner, name, instance=False, optional="", kind="attr") -> Use:
        use = Use(self.path, node.lineno, module, tuple(owner), name, ast.get_source_segment(self.text, node) or name,
                  None, instance, optional, kind, self.min_release)
        self.uses.append(use)
        return use

    def _set_call(self, use: Use, call: ast.Call) -> None:
        star = any(isinstance(a, ast.Starred) for a in call.args)
        kwargs = tuple(k.arg for k in call.keywords if k.arg)
        shape = (None if star else len(call.args), kwargs)
        self.uses[self.uses.index(use)] = Use(**{**use.__dict__, "call": shape})

    # -- walking ------------------------------------------------------------------------------
    def scan(self) -> list[Use]:
        self._imports(self.tree)
        self._block(self.tree.body, {}, ())
        return self.uses

    def _imports(self, tree) -> None:
        """Each import of a checked module is a use (``import tensorrt.plugin`` needs the package)."""
        def visit(node, guards):
            if isinstance(node, ast.Try):
                caught = _caught(node)
                guarded = guards + (("import", caught),) if caught & _GUARD_IMPORT else guards
                for child in node.body:
                    visit(child, guarded)
                for handler in node.handlers:  # the fallback import in "except ImportError:" is optional too
                    for child in handler.body:
                        visit(child, guarded if _caught_by(handler) & _GUARD_IMPORT else guards)
                for child in node.orelse + node.finalbody:
                    visit(child, guards)
                return
            optional = "try/except ImportError" if guards else ""
            if isinstance(node, ast.Import):
                for a in node.names:
                    if self._module_key(a.name) and not a.name.startswith("polygraphy"):
                        self._use(node, self._module_key(a.name), (), a.name, optional=optional, kind="import")
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    dotted = f"{node.module}.{a.name}"
                    if self._module_key(dotted) and not dotted.startswith("polygraphy"):
                        self._use(node, self._module_key(dotted), (), dotted, optional=optional, kind="import")
                    elif self._module_key(node.module):
                        self._use(node, self._module_key(node.module), (), a.name, optional=optional)
            for child in ast.iter_child_nodes(node):
                visit(child, guards)
        visit(tree, ())

    def _block(self, body, scope: dict, guards: tuple) -> None:
        for stmt in body:
            self._stmt(stmt, scope, guards)

    def _stmt(self, node, scope: dict, guards: tuple) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner = dict(scope)
            for deco in node.decorator_list:
                self._expr(deco, scope, guards)
            for arg in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
                inner[arg.arg] = self._annotation_type(arg.annotation, scope, guards) if arg.annotation else None
                if inner[arg.arg] is None:
                    inner.pop(arg.arg)  # an unannotated parameter keeps the naming convention
            if node.returns is not None:
                self._expr(node.returns, scope, guards)
            self._block(node.body, inner, guards)
        elif isinstance(node, ast.ClassDef):
            for base in node.bases:
                self._expr(base, scope, guards)
            self._block(node.body, dict(scope), guards)
        elif isinstance(node, ast.Try):
            caught = _caught(node)
            inner_guards = guards + (("try", caught),) if caught else guards
            self._block(node.body, scope, inner_guards)
            for h in node.handlers:
                self._block(h.body, scope, guards)
            self._block(node.orelse + node.finalbody, scope, guards)
        elif isinstance(node, ast.If):
            probed = _hasattr_names(node.test)
            self._expr(node.test, scope, guards)
            self._block(node.body, scope, guards + tuple(("hasattr", n) for n in probed))
            self._block(node.orelse, scope, guards)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            value = node.value
            result = self._expr(value, scope, guards) if value is not None else None
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                self._bind(t, value, result, scope, guards)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            pass  # recorded by _imports
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    self._stmt(child, scope, guards)
                elif isinstance(child, ast.expr):
                    self._expr(child, scope, guards)
                elif isinstance(child, (ast.withitem, ast.comprehension, ast.keyword, ast.excepthandler,
                                        ast.arguments, ast.match_case)):
                    for sub in ast.iter_child_nodes(child):
                        (self._stmt if isinstance(sub, ast.stmt) else self._expr)(sub, scope, guards) \
                            if isinstance(sub, (ast.stmt, ast.expr)) else None

    def _bind(self, target, value, result, scope, guards) -> None:
        if isinstance(target, ast.Name):
            if target.id not in MODULE_NAMES:
                scope[target.id] = result if result and result[0] == "inst" else "untyped"
        elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
            for t, v in zip(target.elts, value.elts):
                self._bind(t, v, self._value_of(v, scope), scope, guards)
        elif isinstance(target, (ast.Attribute, ast.Subscript)):
            self._expr(target, scope, guards)

    def _value_of(self, node, scope):
        """The value of an expression already walked (no new uses)."""
        saved = self.uses
        self.uses = []
        try:
            return self._expr(node, scope, ())
        finally:
            self.uses = saved

    def _annotation_type(self, node, scope, guards):
        value = self._expr(node, scope, guards)
        return ("inst", value[1], value[2]) if value and value[0] == "class" else None

    def _optional(self, name: str, guards: tuple, reason: str = "") -> str:
        if reason:
            return reason
        for kind, what in reversed(guards):
            if kind == "hasattr" and what == name:
                return f"hasattr(..., {name!r})"
            if kind == "try" and what & _GUARD_ATTR:
                return "try/except " + "/".join(sorted(what & _GUARD_ATTR))
        return ""

    def _expr(self, node, scope: dict, guards: tuple, reason: str = ""):
        """Walk an expression, record its uses, return its value (or None)."""
        if isinstance(node, ast.Name):
            if node.id in scope:
                value = scope[node.id]
                return value if value != "untyped" else None
            if node.id in self.aliases:
                return self.aliases[node.id]
            if node.id in MODULE_NAMES:
                return ("module", MODULE_NAMES[node.id], ())
            if node.id in INSTANCE_NAMES:
                return ("inst", "tensorrt", (INSTANCE_NAMES[node.id],))
            return None
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":  # self._trt, self.engine: by name
                bare = node.attr.lstrip("_")
                if bare in MODULE_NAMES:
                    return ("module", MODULE_NAMES[bare], ())
                if bare in INSTANCE_NAMES and not isinstance(node.ctx, ast.Store):
                    return ("inst", "tensorrt", (INSTANCE_NAMES[bare],))
                return None
            base = self._expr(node.value, scope, guards)
            if base is None:
                return None
            kind, module, path = base
            optional = self._optional(node.attr, guards, reason)
            if kind == "module":
                self._use(node, module, (), node.attr, optional=optional)
                return ("class", module, (node.attr,))
            if kind == "class":
                self._use(node, module, path, node.attr, optional=optional)
                return ("class", module, path + (node.attr,))
            if kind == "inst":
                self._use(node, module, path, node.attr, instance=True, optional=optional)
                return ("member", module, path + (node.attr,))
            return None
        if isinstance(node, ast.Call):
            return self._call(node, scope, guards, reason)
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
            probed: tuple = ()
            for value in node.values:  # hasattr(x, "a") and x.a
                self._expr(value, scope, guards + probed)
                probed += tuple(("hasattr", n) for n in _hasattr_names(value))
            return None
        if isinstance(node, ast.IfExp):
            self._expr(node.test, scope, guards)
            self._expr(node.body, scope, guards + tuple(("hasattr", n) for n in _hasattr_names(node.test)))
            self._expr(node.orelse, scope, guards)
            return None
        if isinstance(node, (ast.Lambda,)):
            return None
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self._expr(child, scope, guards)
            elif isinstance(child, ast.comprehension):
                for sub in ast.iter_child_nodes(child):
                    if isinstance(sub, ast.expr):
                        self._expr(sub, scope, guards)
            elif isinstance(child, ast.keyword):
                self._expr(child.value, scope, guards)
        return None

    def _call(self, node: ast.Call, scope, guards, reason):
        func = node.func
        # getattr(x, "name"[, default]) / hasattr(x, "name"): a use of x.name (optional when probed or defaulted)
        if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr") and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            base = self._expr(node.args[0], scope, guards)
            for extra in node.args[2:]:
                self._expr(extra, scope, guards)
            name = node.args[1].value
            why = ("hasattr probe" if func.id == "hasattr" else "getattr with a default" if len(node.args) > 2 else "")
            if base is not None and base[0] in ("module", "class", "inst"):
                kind, module, path = base
                self._use(node, module, path if kind != "module" else (), name, instance=kind == "inst",
                          optional=self._optional(name, guards, why or reason))
            return None
        before = len(self.uses)
        target = self._expr(func, scope, guards, reason)
        if isinstance(func, ast.Name) and target and target[0] == "class" and func.id not in scope:
            # Imported name called: from polygraphy.comparator import SimpleCompareFunc; SimpleCompareFunc(...)
            self._use(func, target[1], target[2][:-1], target[2][-1], optional=self._optional(func.id, guards, reason))
        called = len(self.uses) - 1 if len(self.uses) > before else None
        for arg in node.args:
            self._expr(arg.value if isinstance(arg, ast.Starred) else arg, scope, guards)
        for kw in node.keywords:
            self._expr(kw.value, scope, guards)
        if target is None:
            return None
        if called is not None and self.uses[called].expr == (ast.get_source_segment(self.text, func) or ""):
            before = called
            use = self.uses[before]
            if any(kind == "try" and what & _GUARD_CALL for kind, what in guards):
                use = Use(**{**use.__dict__, "optional": use.optional or "try/except TypeError"})
                self.uses[before] = use
            self._set_call(use, node)
        kind, module, path = target
        if kind == "class":
            return ("inst", module, path)
        if kind == "member":
            return ("inst", module, path[:-1] + (path[-1] + "()",))
        return None


def _caught(node: ast.Try) -> set[str]:
    """The exception names a try statement's handlers catch (a bare except: BaseException)."""
    return set().union(*(_caught_by(h) for h in node.handlers)) if node.handlers else set()


def _caught_by(handler: ast.ExceptHandler) -> set[str]:
    if handler.type is None:
        return {"BaseException"}
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return {t.id if isinstance(t, ast.Name) else t.attr for t in types if isinstance(t, (ast.Name, ast.Attribute))}


def _hasattr_names(test) -> list[str]:
    """Names probed by hasattr(x, "name") in a condition (and inside and/or/not)."""
    out = []
    for n in ast.walk(test):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "hasattr" and len(n.args) == 2 \
                and isinstance(n.args[1], ast.Constant):
            out.append(n.args[1].value)
    return out


def project_uses(paths, root=None) -> list[Use]:
    """Every use of tensorrt, tensorrt.plugin, cuda-python and Polygraphy in the .py files under
    ``paths`` (files or folders), found with ast. What is inferred, and what is not:

    * modules: ``import tensorrt as X``, ``from tensorrt import plugin as X``, ``from cuda.bindings
      import runtime as X``; and by the project's convention the names ``trt``, ``trtp``, ``cudart``
      and ``drv`` (parameters, ``self._trt``, ``trt = tb.import_tensorrt()``) are those modules;
    * names: ``from tensorrt import Builder`` and ``from polygraphy.comparator import Comparator``;
    * instances: ``x = trt.Builder(...)``, ``net = builder.create_network(...)`` (typed through the
      method's return type in each release), parameters annotated ``trtp.TensorDesc``, and by name
      (``INSTANCE_NAMES``: builder, network/net, parser, engine, context, runtime, also as
      ``self.engine``) unless the variable is assigned something else in that scope;
    * optional uses: the name probed by an enclosing ``if hasattr(x, "name")`` (or ``and`` /
      conditional expression), ``getattr(x, "name", default)``, ``hasattr`` probes themselves, and
      anything inside ``try:`` whose handlers catch AttributeError (or Exception); call shapes inside
      ``try/except TypeError`` likewise; imports inside ``try/except ImportError``;
    * a file with a module-level ``TENSORRT_MIN_VERSION = "10.14"`` is checked against releases from
      that one on only (a part of the project that refuses older releases itself).

    Not followed: values passed through containers, returned from project functions (other than the
    module helpers above), or attributes set on objects other than by these rules."""
    root = Path(root) if root else None
    files = []
    for p in paths:
        p = Path(p)
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    uses: list[Use] = []
    for f in files:
        text = f.read_text()
        rel = str(f.relative_to(root)) if root and f.is_absolute() and root in f.parents else str(f)
        uses += _Scanner(rel, text).scan()
    return uses


# ==============================================================================================
# Checks
# ==============================================================================================

@dataclass(frozen=True)
class Finding:
    """A use the release cannot satisfy. ``optional``: the code guards it (hasattr, try/except,
    getattr default), so it may be absent; it is still reported."""
    where: str
    expr: str
    release: str
    problem: str
    optional: bool = False
    why: str = ""

    def __str__(self) -> str:
        tail = f" (optional, absent: {self.why})" if self.optional else ""
        return f"{self.where}: {self.expr}: {self.problem} [{self.release}]{tail}"


def _finding(use: Use, release: str, problem: str) -> Finding:
    return Finding(use.where(), use.expr, release, problem, bool(use.optional), use.optional)


def _return_class(member: Member, classes) -> str | None:
    for sig in member.signatures:
        ret = sig.rsplit("->", 1)[-1].strip() if "->" in sig else ""
        if ret in classes:
            return ret
    return None


def _resolve_tensorrt(api: TrtApi, path: tuple) -> str | None:
    """The class a type path names in this release (see Use), or None when it cannot be told."""
    if not path or path[0] not in api.classes:
        return None
    cls = path[0]
    for step in path[1:]:
        if step.endswith("()"):
            m = api.member(cls, step[:-2])
            cls = _return_class(m, api.classes) if m else None
        else:
            m = api.member(cls, step)
            cls = step if m is not None and m.kind == "class" and step in api.classes else None
        if cls is None:
            return None
    return cls


def _arity_problem(member: Member, use: Use, bound: bool) -> str | None:
    """Too many positional arguments for every overload (pybind11 signatures count self)."""
    if use.call is None or use.call[0] is None:
        return None
    most = member.max_positional()
    if most is None:
        return None
    given = use.call[0] + (1 if bound else 0)
    if given > most:
        return f"takes at most {most - (1 if bound else 0)} positional arguments here, called with {use.call[0]} " \
               f"({'; '.join(member.signatures)})"
    return None


def _python_call_problem(member: Member, use: Use, drop_self: bool = False) -> str | None:
    """Arity and keyword names against a Python function's parameters (tensorrt.plugin, __init__.py)."""
    if use.call is None or not member.params:
        return None
    problems = []
    for params in member.params:
        params = params[1:] if drop_self and params and params[0] in ("self", "cls") else params
        positional = [p for p in params if not p.startswith("*") and not p.endswith("=")]
        star = any(p.startswith("*") and not p.startswith("**") for p in params)
        starstar = any(p.startswith("**") for p in params)
        names = {p.rstrip("=") for p in params if not p.startswith("*")}
        npos, kwargs = use.call
        if npos is not None and npos > len(positional) and not star:
            problems.append(f"takes at most {len(positional)} positional arguments, called with {npos}")
        elif any(k not in names for k in kwargs) and not starstar:
            problems.append(f"has no parameter {', '.join(k for k in kwargs if k not in names)}")
        else:
            return None
    return f"{problems[0]} ({'; '.join(member.signatures)})" if problems else None


def check_uses(api: TrtApi, uses, honour_minimum: bool = True) -> list[Finding]:
    """Findings for every tensorrt / tensorrt.plugin use this release cannot satisfy. Uses in files
    that declare TENSORRT_MIN_VERSION above this release are skipped unless ``honour_minimum`` is False."""
    out = []
    release = release_key(api.release)
    for use in uses:
        if use.module not in ("tensorrt", "tensorrt.plugin"):
            continue
        if honour_minimum and use.min_release and release[:len(use.min_release)] < tuple(use.min_release):
            continue
        problem = (_check_tensorrt_use if use.module == "tensorrt" else _check_plugin_use)(api, use)
        if problem:
            out.append(_finding(use, api.release, problem))
    return out


def _check_tensorrt_use(api: TrtApi, use: Use) -> str | None:
    if use.kind == "import":
        return None
    if not use.owner:
        member = api.module_member(use.name)
        if member is None:
            return f"tensorrt has no {use.name}"
        if member.kind == "class":
            init = api.member(use.name, "__init__")
            return _arity_problem(init, use, bound=True) if init else None
        return _arity_problem(member, use, bound=False) or _python_call_problem(member, use)
    cls = _resolve_tensorrt(api, use.owner)
    if cls is None:
        return None  # the owner itself is missing (reported on its own) or not known statically
    member = api.member(cls, use.name)
    if member is None:
        return f"{cls} has no {use.name}"
    if member.kind == "class" and use.call:
        init = api.member(use.name, "__init__")
        return _arity_problem(init, use, bound=True) if init else None
    if use.call and member.kind in ("enum", "property"):
        return f"{cls}.{use.name} is {'an enum value' if member.kind == 'enum' else 'a property'}, not a method"
    return _arity_problem(member, use, bound=use.instance)


def _check_plugin_use(api: TrtApi, use: Use) -> str | None:
    plugin = api.plugin
    if use.kind == "import":
        if plugin is None:
            return "this release has no tensorrt.plugin"
        if api.plugin_in_pip is False:
            return "the pip package (tensorrt-cuNN) ships no tensorrt/plugin: `import tensorrt.plugin` fails there " \
                   "(containers and tarballs have it)"
        return None
    if plugin is None:
        return "this release has no tensorrt.plugin"
    if not use.owner:
        member = plugin.names.get(use.name)
        if member is None:
            return f"tensorrt.plugin has no {use.name}"
        if member.kind == "class" and use.call:
            init = plugin.classes.get(use.name, {}).get("__init__")
            return _python_call_problem(init, use) if init else None
        return _python_call_problem(member, use)
    cls = use.owner[0] if len(use.owner) == 1 and use.owner[0] in plugin.classes else None
    if cls is None:
        return None
    member = plugin.classes[cls].get(use.name)
    if member is None:
        return f"tensorrt.plugin.{cls} has no {use.name}"
    return _python_call_problem(member, use) if member.kind == "method" else None


# -- decorated plugin functions against _validate.py ------------------------------------------

_PLUGIN_DECORATORS = ("register", "impl", "aot_impl", "autotune")


def _plugin_decorated(tree: ast.Module, plugin_aliases: set[str]):
    """(kind, id source text, FunctionDef) for every @trtp.register(ID) / impl / aot_impl / autotune."""
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        for d in fn.decorator_list:
            if isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr in _PLUGIN_DECORATORS \
                    and isinstance(d.func.value, ast.Name) and d.func.value.id in plugin_aliases and d.args:
                yield d.func.attr, ast.unparse(d.args[0]), fn


def _ann_name(node) -> str | None:
    """trtp.TensorDesc / TensorDesc / int -> the bare name."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Constant) and node.value is None:
        return "None"
    return None


def _ann_args(node, containers) -> list | None:
    """Tuple[A, B] / tuple[A, B] / Union[A, B] / A | B -> [A, B] when the container matches."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and "Union" in containers:
        return (_ann_args(node.left, containers) or [node.left]) + (_ann_args(node.right, containers) or [node.right])
    if isinstance(node, ast.Subscript) and _ann_name(node.value) in containers:
        s = node.slice
        return list(s.elts) if isinstance(s, ast.Tuple) else [s]
    return None


def _is_subclass(plugin: PluginApi, name: str | None, base: str) -> bool:
    seen, todo = set(), [name]
    while todo:
        c = todo.pop()
        if c == base:
            return True
        if c in seen or c is None:
            continue
        seen.add(c)
        todo += plugin.bases.get(c, [])
    return False


def check_plugin_functions(api: TrtApi, path, text: str | None = None, ids: dict | None = None,
                           root=None) -> list[Finding]:
    """The functions in ``path`` decorated with tensorrt.plugin's register / impl / aot_impl /
    autotune, checked against this release's ``_validate.py`` (see the module docstring).
    ``ids``: values of the plugin-id expressions (e.g. {"NPR_ID": "lfm::LfmNpr"}) for the
    namespace rules; unknown ids are not checked. ``root``: findings name the file relative to it."""
    text = Path(path).read_text() if text is None else text
    path = str(Path(path).relative_to(root)) if root and Path(root) in Path(path).parents else str(path)
    tree = ast.parse(text, filename=path)
    scanner = _Scanner(path, text)
    aliases = {n for n, v in scanner.aliases.items() if v == ("module", "tensorrt.plugin", ())} | {"trtp"}
    plugin = api.plugin
    out: list[Finding] = []

    def bad(fn, what):
        out.append(Finding(f"{path}:{fn.lineno}", fn.name, api.release, what))

    registered: dict[str, dict] = {}
    decorated = list(_plugin_decorated(tree, aliases))
    if decorated and plugin is None:
        bad(decorated[0][2], "this release has no tensorrt.plugin")
        return out
    rules = plugin.rules if plugin else {}
    for kind, pid, fn in decorated:
        if kind == "register":
            registered[pid] = _check_register(plugin, rules, fn, pid, (ids or {}).get(pid), bad)
    for kind, pid, fn in decorated:
        if kind == "register":
            continue
        if kind not in rules["validators"]:
            bad(fn, f"tensorrt.plugin.{kind}: this release's _validate.py has no _validate_{kind} (not supported)")
            continue
        if pid not in registered:
            bad(fn, f"@{kind}({pid}) without a @register({pid}) in the same file")
            continue
        _check_implementation(plugin, rules, kind, fn, registered[pid], bad)
    return out


def _check_register(plugin: PluginApi, rules: dict, fn: ast.FunctionDef, pid: str, value, bad) -> dict:
    """_parse_register_inputs / _parse_register_return / _validate_name_and_namespace, mirrored."""
    a = fn.args
    if a.posonlyargs or a.vararg or a.kwarg:
        bad(fn, "register: every argument must be positional-or-keyword or keyword-only")
    tensors, attrs = [], {}
    params = a.args + a.kwonlyargs
    defaults = len(a.defaults) + sum(d is not None for d in a.kw_defaults)
    if defaults:
        bad(fn, "register: default values are not supported")
    for i, p in enumerate(params):
        if p.annotation is None:
            bad(fn, f"register: argument {p.arg} needs a type annotation")
            continue
        name = _ann_name(p.annotation)
        if _is_subclass(plugin, name, "TensorDesc"):
            if attrs:
                bad(fn, f"register: TensorDesc argument {p.arg} after attributes (they cannot be interspersed)")
            tensors.append(p.arg)
            continue
        if i == 0:
            bad(fn, "register: TensorDesc arguments must come first")
        if p.arg in rules["disallowed_attrs"]:
            bad(fn, f"register: {p.arg!r} is not allowed as an attribute name")
        numpy = "NDArray" in ast.unparse(p.annotation) or ast.unparse(p.annotation) in ("np.ndarray", "numpy.ndarray")
        if name not in rules["serializable"] and not numpy:
            bad(fn, f"register: attribute {p.arg} annotated {ast.unparse(p.annotation)}, not one of "
                    f"{', '.join(rules['serializable'])} or a numpy array")
        attrs[p.arg] = ast.unparse(p.annotation)
    ret = fn.returns
    outs = _ann_args(ret, ("Tuple", "tuple")) if ret is not None else None
    if ret is None:
        bad(fn, "register: a return annotation (TensorDesc or Tuple[TensorDesc, ...]) is required")
    elif not all(_is_subclass(plugin, _ann_name(o), "TensorDesc") for o in (outs or [ret])):
        bad(fn, f"register: returns {ast.unparse(ret)}, not TensorDesc or Tuple[TensorDesc, ...]")
    if isinstance(value, str):
        ns, _, name = value.partition("::")
        if not name or "." in ns or "." in name or ns in rules["reserved_namespaces"]:
            bad(fn, f"register: plugin id {value!r} must be 'namespace::name', no '.', namespace not one of "
                    f"{rules['reserved_namespaces']}")
    return {"tensors": tensors, "attrs": attrs}


def _check_implementation(plugin: PluginApi, rules: dict, kind: str, fn: ast.FunctionDef, reg: dict, bad) -> None:
    """_validate_impl / _validate_aot_impl / _validate_autotune, mirrored."""
    tensor_class = "Tensor" if kind == "impl" else "TensorDesc"
    params = [p.arg for p in fn.args.args]
    validator = rules["validators"][kind]
    tail = list(validator["tail"])
    optional_tail = [t for t in validator["optional_tail"] if t in params]
    for p in fn.args.args:
        if p.annotation is None:
            continue
        ann = p.annotation
        if p.arg == "outputs":
            inner = _ann_args(ann, ("Tuple", "tuple"))
            if inner is None or not all(_is_subclass(plugin, _ann_name(x), tensor_class) for x in inner):
                bad(fn, f"{kind}: 'outputs' annotated {ast.unparse(ann)}, should be Tuple[{tensor_class}]")
        elif p.arg in ("stream", "tactic"):
            if _ann_name(ann) != "int":
                bad(fn, f"{kind}: {p.arg!r} should be annotated int")
        elif _is_subclass(plugin, _ann_name(ann), tensor_class) or _is_subclass(plugin, _ann_name(ann), "TensorDesc") \
                or _is_subclass(plugin, _ann_name(ann), "Tensor"):
            if not _is_subclass(plugin, _ann_name(ann), tensor_class):
                bad(fn, f"{kind}: tensor {p.arg} annotated {ast.unparse(ann)}, should be {tensor_class}")
            elif p.arg not in reg["tensors"]:
                bad(fn, f"{kind}: unexpected tensor {p.arg!r}; registered: {reg['tensors']}")
        elif p.arg not in reg["attrs"]:
            bad(fn, f"{kind}: unexpected attribute {p.arg!r}; registered: {list(reg['attrs'])}")
        elif ast.unparse(ann) != reg["attrs"][p.arg]:
            bad(fn, f"{kind}: attribute {p.arg} annotated {ast.unparse(ann)}, registered as {reg['attrs'][p.arg]}")
    attrs = [n for n in reg["attrs"] if n in params]
    expected = reg["tensors"] + attrs + tail + optional_tail
    if params != expected:
        bad(fn, f"{kind}: parameters ({', '.join(params)}) should be ({', '.join(expected)})")
    ret = fn.returns
    if kind == "impl" and ret is not None and _ann_name(ret) != "None":
        bad(fn, "impl: the return annotation must be None")
    if kind == "aot_impl":
        _check_aot_return(plugin, rules, fn, bad)
    if kind == "autotune" and ret is not None:
        inner = _ann_args(ret, ("List", "list")) or [ret]
        if not all(_ann_name(x) == "AutoTuneCombination" for x in inner):
            bad(fn, f"autotune: returns {ast.unparse(ret)}, not AutoTuneCombination or List[AutoTuneCombination]")


def _check_aot_return(plugin: PluginApi, rules: dict, fn: ast.FunctionDef, bad) -> None:
    ret = fn.returns
    want = rules.get("aot_return") or "tuple[str | bytes, str | bytes, KernelLaunchParams, SymExprs]"
    parts = _ann_args(ret, ("Tuple", "tuple")) if ret is not None else None
    if parts is None or len(parts) != 4:
        bad(fn, f"aot_impl: return annotation {ast.unparse(ret) if ret is not None else 'missing'}, expected {want}")
        return
    for i in (0, 1):
        names = [_ann_name(x) for x in (_ann_args(parts[i], ("Union",)) or [parts[i]])]
        if not all(n in ("str", "bytes") for n in names):
            bad(fn, f"aot_impl: return element {i} is {ast.unparse(parts[i])}, expected str or bytes")
    if _ann_name(parts[2]) != "KernelLaunchParams" or "KernelLaunchParams" not in plugin.names:
        bad(fn, f"aot_impl: return element 2 is {ast.unparse(parts[2])}, expected tensorrt.plugin.KernelLaunchParams")
    if not _is_subclass(plugin, _ann_name(parts[3]), "SymExprs"):
        bad(fn, f"aot_impl: return element 3 is {ast.unparse(parts[3])}, expected a tensorrt.plugin.SymExprs subclass")


# -- cuda-python (read statically from the wheel or the installed files) -----------------------

@dataclass
class CudaApi:
    """cuda-python's runtime and driver modules: functions with their embedded (Cython) signatures
    and every identifier in each module (enum classes and values, checked leniently by presence)."""
    version: str
    functions: dict[str, dict[str, list[str]]]  # "cuda.runtime" -> name -> parameters
    names: dict[str, set[str]]
    modules: set[str]  # importable dotted module names in the distribution


_CY_SIGNATURE = re.compile(rb"(?<![\w.])([A-Za-z_]\w*)\(([^()\n\x00]*)\)(?:\s*->\s*[^\n\x00]*)?(?=[\n\x00])")


def _split_params(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()] if text.strip() else []


def read_cuda_bindings(source, version: str = "") -> CudaApi:
    """A cuda-bindings wheel, or an installed ``cuda`` package folder (its parent on sys.path)."""
    source = Path(source)
    files: dict[str, bytes] = {}
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as zf:
            names = zf.namelist()
            for n in names:
                if re.fullmatch(r"cuda/(bindings/)?(runtime|driver|cudart|cuda)\.cpython[^/]*\.so", n):
                    files[n] = zf.read(n)
        version = version or source.name.split("-")[1]
    else:
        names = [str(p.relative_to(source.parent)) for p in source.rglob("*") if p.is_file()]
        for n in names:
            if re.fullmatch(r"cuda/(bindings/)?(runtime|driver|cudart|cuda)\.cpython[^/]*\.so", n):
                files[n] = (source.parent / n).read_bytes()
    modules = set()
    for n in names:
        m = re.fullmatch(r"(cuda/(?:[\w/]*/)?\w+?)(?:\.cpython[^/]*\.so|\.py)", n)
        if m:
            modules.add(m.group(1).replace("/", ".").removesuffix(".__init__"))
    functions, idents = {"cuda.runtime": {}, "cuda.driver": {}}, {"cuda.runtime": set(), "cuda.driver": set()}
    for n, data in sorted(files.items()):  # cuda/bindings/x wins over the legacy cuda/x: read it last
        key = "cuda.runtime" if re.search(r"/(runtime|cudart)\.", n) else "cuda.driver"
        for m in _CY_SIGNATURE.finditer(data):
            functions[key][m.group(1).decode("latin-1")] = _split_params(m.group(2).decode("latin-1"))
        idents[key] |= {s.decode("latin-1") for s in re.findall(rb"[A-Za-z_][A-Za-z0-9_]{2,}", data)}
    if not functions["cuda.runtime"] or not functions["cuda.driver"]:
        raise ApiReadError(f"{source}: no cuda-python runtime/driver signatures found")
    return CudaApi(version, functions, idents, modules)


def check_cuda(api: CudaApi, uses) -> list[Finding]:
    """cuda-python names and argument counts (from the Cython signatures) for the project's uses."""
    out = []
    for use in uses:
        if use.module not in ("cuda.runtime", "cuda.driver"):
            continue
        release = f"cuda-python {api.version}"
        if use.kind == "import":
            if use.name not in api.modules:
                out.append(_finding(use, release, f"no module {use.name}"))
            continue
        if use.owner:  # an enum value: present as an identifier of the module
            if use.name not in api.names[use.module]:
                out.append(_finding(use, release, f"{use.module} has no {'.'.join(use.owner)}.{use.name}"))
            continue
        params = api.functions[use.module].get(use.name)
        if params is None:
            if use.name not in api.names[use.module] or use.call:
                out.append(_finding(use, release, f"{use.module} has no {'function ' if use.call else ''}{use.name}"))
            continue
        if use.call is None or use.call[0] is None or any(p.startswith("*") for p in params):
            continue
        required = [p for p in params if "=" not in p]
        if not len(required) <= use.call[0] <= len(params):
            out.append(_finding(use, release, f"{use.name}({', '.join(params)}) called with {use.call[0]} arguments"))
    return out


# -- Polygraphy (the installed one, by inspect) ---------------------------------------------------

def check_polygraphy(uses) -> list[Finding]:
    """Names and call shapes of the project's Polygraphy uses against the installed Polygraphy."""
    import importlib
    import inspect

    out = []
    for use in uses:
        if not use.module.startswith("polygraphy"):
            continue
        release = "polygraphy " + getattr(importlib.import_module("polygraphy"), "__version__", "?")
        try:
            obj = importlib.import_module(use.module)
        except ImportError as e:
            out.append(_finding(use, release, f"cannot import {use.module} ({e})"))
            continue
        path = list(use.owner) + [use.name]
        owner = None
        for i, step in enumerate(path):
            if not hasattr(obj, step):
                out.append(_finding(use, release, f"{'.'.join([use.module] + path[:i])} has no {step}"))
                obj = None
                break
            owner, obj = obj, getattr(obj, step)
        if obj is None or use.call is None:
            continue
        problem = _bind_problem(obj, use, bound=use.instance and inspect.isclass(owner))
        if problem:
            out.append(_finding(use, release, problem))
    return out


def _bind_problem(obj, use: Use, bound: bool) -> str | None:
    import inspect

    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    npos, kwargs = use.call
    if npos is None:
        return None
    args = [None] * (npos + (1 if bound else 0))
    accepted = _forwarded_keywords(obj) if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()) else None
    try:
        sig.bind(*args, **{k: None for k in kwargs})
    except TypeError as e:
        return f"{e} (signature {sig})"
    if accepted is not None:
        unknown = [k for k in kwargs if k not in accepted and k not in sig.parameters]
        if unknown:
            return f"keyword {', '.join(unknown)} is accepted by no __init__ in its class hierarchy (**kwargs forwarded)"
    return None


def _forwarded_keywords(obj) -> set[str] | None:
    """For a class whose __init__ takes **kwargs and forwards them (super().__init__(**kwargs)):
    the keyword names some __init__ up the MRO names. None when it cannot be told."""
    import inspect

    if not inspect.isclass(obj):
        return None
    names: set[str] = set()
    for cls in obj.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return None
