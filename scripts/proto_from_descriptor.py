"""Print a proto3 ``.proto`` file equivalent to a compiled FileDescriptorProto.

The descriptor comes from an installed ``*_pb2`` module (its ``DESCRIPTOR.serialized_pb``), so a protocol
definition can be taken from what a package registry ships instead of copying a source file. Compiling the
output with protoc gives back the same FileDescriptorProto (messages, enums, services, options; the
original's comments are not part of a descriptor and so are not reproduced). Only the import paths named
with ``--rename-import`` change.

The OIP definition in proto/emotion/oip/ is regenerated with:

    .venv/bin/python scripts/proto_from_descriptor.py tritonclient.grpc.model_config_pb2 \\
        --distribution tritonclient -o proto/emotion/oip/model_config.proto
    .venv/bin/python scripts/proto_from_descriptor.py tritonclient.grpc.service_pb2 \\
        --distribution tritonclient --rename-import model_config.proto=emotion/oip/model_config.proto \\
        -o proto/emotion/oip/grpc_service.proto

Standard library and protobuf only.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from google.protobuf import descriptor_pb2, text_encoding, unknown_fields
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

FDP = descriptor_pb2.FieldDescriptorProto
FileProto = descriptor_pb2.FileDescriptorProto
SCALARS = {
    FDP.TYPE_DOUBLE: "double", FDP.TYPE_FLOAT: "float", FDP.TYPE_INT64: "int64", FDP.TYPE_UINT64: "uint64",
    FDP.TYPE_INT32: "int32", FDP.TYPE_FIXED64: "fixed64", FDP.TYPE_FIXED32: "fixed32", FDP.TYPE_BOOL: "bool",
    FDP.TYPE_STRING: "string", FDP.TYPE_BYTES: "bytes", FDP.TYPE_UINT32: "uint32",
    FDP.TYPE_SFIXED32: "sfixed32", FDP.TYPE_SFIXED64: "sfixed64", FDP.TYPE_SINT32: "sint32",
    FDP.TYPE_SINT64: "sint64",
}
MESSAGE_RESERVED_MAX = 536870912  # exclusive end of "max" in a message reserved range (field numbers < 2^29)
ENUM_RESERVED_MAX = 2147483647  # inclusive end of "max" in an enum reserved range
TITLE = "Triton Inference Server Open Inference Protocol"


class Unsupported(Exception):
    """The descriptor uses something this printer does not write (proto2/editions features, extensions)."""


def load_files(module_name: str) -> tuple[FileProto, list[FileProto]]:
    """The module's FileDescriptorProto and those of all the files it imports (transitively)."""
    module = importlib.import_module(module_name)
    seen: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def visit(file: Any) -> None:
        if file.name in seen:
            return
        seen[file.name] = descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb)
        for dependency in file.dependencies:
            visit(dependency)

    visit(module.DESCRIPTOR)
    main = seen.pop(module.DESCRIPTOR.name)
    return main, list(seen.values())


class Scopes:
    """Every name declared in every scope, to print each type reference by the shortest name that protoc
    resolves to the same type from where it is used (C++-like scoping: innermost scope first)."""

    def __init__(self, files: Iterable[descriptor_pb2.FileDescriptorProto]) -> None:
        self.names: dict[str, set[str]] = {}
        for file in files:
            scope = ""
            for part in file.package.split(".") if file.package else []:
                self._declare(scope, part)
                scope = f"{scope}.{part}" if scope else part
            self._declare_contents(scope, file.message_type, file.enum_type)
            for service in file.service:
                self._declare(scope, service.name)
                for method in service.method:
                    self._declare(self._join(scope, service.name), method.name)

    @staticmethod
    def _join(scope: str, name: str) -> str:
        return f"{scope}.{name}" if scope else name

    def _declare(self, scope: str, name: str) -> None:
        self.names.setdefault(scope, set()).add(name)

    def _declare_contents(self, scope: str, messages: Iterable[descriptor_pb2.DescriptorProto],
                          enums: Iterable[descriptor_pb2.EnumDescriptorProto]) -> None:
        for enum in enums:
            self._declare(scope, enum.name)
            for value in enum.value:  # enum values are siblings of their enum
                self._declare(scope, value.name)
        for message in messages:
            self._declare(scope, message.name)
            inner = self._join(scope, message.name)
            for field in [*message.field, *message.extension]:
                self._declare(inner, field.name)
            for oneof in message.oneof_decl:
                self._declare(inner, oneof.name)
            self._declare_contents(inner, message.nested_type, message.enum_type)

    def reference(self, type_name: str, scope: str) -> str:
        """How to write the fully-qualified ``type_name`` (".pkg.Msg") when used inside ``scope``."""
        target = type_name.lstrip(".")
        parts = target.split(".")
        for count in range(1, len(parts) + 1):
            candidate = parts[-count:]
            if self._resolve_first(candidate[0], scope) == ".".join(parts[: len(parts) - count + 1]):
                return ".".join(candidate)
        return type_name  # the leading dot makes it fully qualified

    def _resolve_first(self, name: str, scope: str) -> str | None:
        """Where protoc finds the first component of a name: the innermost enclosing scope declaring it."""
        while True:
            if name in self.names.get(scope, ()):
                return self._join(scope, name)
            if not scope:
                return None
            scope = scope.rpartition(".")[0]


def check_known(message: Message, where: str) -> None:
    if len(unknown_fields.UnknownFieldSet(message)):
        raise Unsupported(f"{where}: unknown fields (custom options?) in {type(message).__name__}")


def literal(field: FieldDescriptor, value: Any) -> str:
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return str(field.enum_type.values_by_number[value].name)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return "true" if value else "false"
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        raw = value if isinstance(value, bytes) else value.encode("utf-8")
        return '"' + text_encoding.CEscape(raw, as_utf8=field.type == FieldDescriptor.TYPE_STRING) + '"'
    return repr(value)


def option_items(options: Message, where: str, skip: tuple[str, ...] = ()) -> list[str]:
    """``name = value`` for every option set (extensions as ``(full.name)``)."""
    check_known(options, where)
    items = []
    for field, value in options.ListFields():
        if field.name in skip:
            continue
        if field.is_repeated or field.type == FieldDescriptor.TYPE_MESSAGE:
            raise Unsupported(f"{where}: option {field.full_name} is not a scalar")
        name = f"({field.full_name})" if field.is_extension else field.name
        items.append(f"{name} = {literal(field, value)}")
    return items


def json_name_default(name: str) -> str:
    """protoc's default json_name: lowerCamelCase, dropping underscores."""
    out, upper = [], False
    for char in name:
        if char == "_":
            upper = True
        elif upper:
            out.append(char.upper())
            upper = False
        else:
            out.append(char)
    return "".join(out)


def ranges(spans: Iterable[tuple[int, int]], maximum: int) -> str:
    """``reserved`` numbers: each span is (start, last), both inclusive."""
    out = []
    for start, last in spans:
        if start == last:
            out.append(str(start))
        else:
            out.append(f"{start} to {'max' if last == maximum else last}")
    return ", ".join(out)


class Printer:
    def __init__(self, file: descriptor_pb2.FileDescriptorProto,
                 dependencies: list[descriptor_pb2.FileDescriptorProto], renames: dict[str, str]) -> None:
        if file.syntax != "proto3":
            raise Unsupported(f"{file.name}: syntax {file.syntax or 'proto2'!r}; only proto3 is printed")
        if file.extension:
            raise Unsupported(f"{file.name}: extensions")
        self.file = file
        self.renames = renames
        self.scopes = Scopes([file, *dependencies])
        self.lines: list[str] = []

    def emit(self, depth: int, text: str) -> None:
        self.lines.append("  " * depth + text if text else "")

    def options(self, depth: int, options: Message, where: str) -> None:
        for item in option_items(options, where):
            self.emit(depth, f"option {item};")

    def print_file(self) -> list[str]:
        file = self.file
        self.emit(0, 'syntax = "proto3";')
        self.emit(0, "")
        if file.package:
            self.emit(0, f"package {file.package};")
            self.emit(0, "")
        if file.dependency:
            for index, dependency in enumerate(file.dependency):
                kind = ("public " if index in file.public_dependency else
                        "weak " if index in file.weak_dependency else "")
                self.emit(0, f'import {kind}"{self.renames.get(dependency, dependency)}";')
            self.emit(0, "")
        if file.HasField("options"):
            self.options(0, file.options, file.name)
            self.emit(0, "")
        for enum in file.enum_type:
            self.enum(0, enum, file.package)
            self.emit(0, "")
        for message in file.message_type:
            self.message(0, message, file.package)
            self.emit(0, "")
        for service in file.service:
            self.service(service)
            self.emit(0, "")
        while self.lines and not self.lines[-1]:
            self.lines.pop()
        return self.lines

    def enum(self, depth: int, enum: descriptor_pb2.EnumDescriptorProto, scope: str) -> None:
        where = f"{scope}.{enum.name}"
        check_known(enum, where)
        self.emit(depth, f"enum {enum.name} {{")
        self.options(depth + 1, enum.options, where)
        for value in enum.value:
            check_known(value, f"{where}.{value.name}")
            items = option_items(value.options, f"{where}.{value.name}")
            suffix = f" [{', '.join(items)}]" if items else ""
            self.emit(depth + 1, f"{value.name} = {value.number}{suffix};")
        if enum.reserved_range:
            spans = ((span.start, span.end) for span in enum.reserved_range)
            self.emit(depth + 1, f"reserved {ranges(spans, ENUM_RESERVED_MAX)};")
        if enum.reserved_name:
            self.emit(depth + 1, "reserved " + ", ".join(f'"{name}"' for name in enum.reserved_name) + ";")
        self.emit(depth, "}")

    def type_of(self, field: descriptor_pb2.FieldDescriptorProto, scope: str) -> str:
        if field.type in SCALARS:
            return SCALARS[field.type]
        if field.type in (FDP.TYPE_MESSAGE, FDP.TYPE_ENUM):
            return self.scopes.reference(field.type_name, scope)
        raise Unsupported(f"{scope}.{field.name}: field type {field.type} (groups are proto2)")

    def field(self, depth: int, field: descriptor_pb2.FieldDescriptorProto, scope: str,
              entries: dict[str, descriptor_pb2.DescriptorProto]) -> None:
        where = f"{scope}.{field.name}"
        check_known(field, where)
        if field.HasField("default_value") or field.HasField("extendee"):
            raise Unsupported(f"{where}: default values and extensions are proto2")
        items = option_items(field.options, where)
        if field.HasField("json_name") and field.json_name != json_name_default(field.name):
            json_name = FDP.DESCRIPTOR.fields_by_name["json_name"]
            items.append(f"json_name = {literal(json_name, field.json_name)}")
        suffix = f" [{', '.join(items)}]" if items else ""
        entry = entries.get(field.type_name) if field.type == FDP.TYPE_MESSAGE else None
        if entry is not None:
            key, value = sorted(entry.field, key=lambda part: part.number)
            kind = f"map<{self.type_of(key, scope)}, {self.type_of(value, scope)}>"
        else:
            label = {FDP.LABEL_REPEATED: "repeated ", FDP.LABEL_REQUIRED: "required "}.get(field.label, "")
            if field.proto3_optional:
                label = "optional "
            elif field.label == FDP.LABEL_REQUIRED:
                raise Unsupported(f"{where}: required fields are proto2")
            kind = label + self.type_of(field, scope)
        self.emit(depth, f"{kind} {field.name} = {field.number}{suffix};")

    def message(self, depth: int, message: descriptor_pb2.DescriptorProto, parent: str) -> None:
        scope = f"{parent}.{message.name}" if parent else message.name
        check_known(message, scope)
        if message.extension or message.extension_range:
            raise Unsupported(f"{scope}: extensions are proto2")
        self.emit(depth, f"message {message.name} {{")
        self.options(depth + 1, message.options, scope)
        for enum in message.enum_type:
            self.enum(depth + 1, enum, scope)
        entries = {f".{scope}.{nested.name}": nested for nested in message.nested_type
                   if nested.options.map_entry}
        fields = iter(self.field_groups(message))
        # protoc appends a map's entry type to nested_type where the map field is declared, so a map field
        # is written after the nested messages that precede its entry and before those that follow it.
        for nested in message.nested_type:
            if nested.options.map_entry:
                for group in fields:
                    self.field_group(depth + 1, message, group, scope, entries)
                    if any(f".{scope}.{nested.name}" == field.type_name for field in group):
                        break
            else:
                self.message(depth + 1, nested, scope)
        for group in fields:
            self.field_group(depth + 1, message, group, scope, entries)
        reserved_fields = ((span.start, span.end - 1) for span in message.reserved_range)
        if message.reserved_range:
            self.emit(depth + 1, f"reserved {ranges(reserved_fields, MESSAGE_RESERVED_MAX - 1)};")
        if message.reserved_name:
            self.emit(depth + 1, "reserved " + ", ".join(f'"{name}"' for name in message.reserved_name) + ";")
        self.emit(depth, "}")

    @staticmethod
    def field_groups(message: descriptor_pb2.DescriptorProto) -> Iterator[list[FDP]]:
        """Fields in order, the members of each real oneof together (protoc keeps them contiguous)."""
        group: list[descriptor_pb2.FieldDescriptorProto] = []
        for field in message.field:
            real_oneof = field.HasField("oneof_index") and not field.proto3_optional
            if group and (not real_oneof or field.oneof_index != group[0].oneof_index):
                yield group
                group = []
            if real_oneof:
                group.append(field)
            else:
                yield [field]
        if group:
            yield group

    def field_group(self, depth: int, message: descriptor_pb2.DescriptorProto,
                    group: list[descriptor_pb2.FieldDescriptorProto], scope: str,
                    entries: dict[str, descriptor_pb2.DescriptorProto]) -> None:
        first = group[0]
        if not first.HasField("oneof_index") or first.proto3_optional:
            self.field(depth, first, scope, entries)
            return
        oneof = message.oneof_decl[first.oneof_index]
        self.emit(depth, f"oneof {oneof.name} {{")
        self.options(depth + 1, oneof.options, f"{scope}.{oneof.name}")
        for field in group:
            self.field(depth + 1, field, scope, entries)
        self.emit(depth, "}")

    def service(self, service: descriptor_pb2.ServiceDescriptorProto) -> None:
        scope = f"{self.file.package}.{service.name}" if self.file.package else service.name
        check_known(service, scope)
        self.emit(0, f"service {service.name} {{")
        self.options(1, service.options, scope)
        for method in service.method:
            check_known(method, f"{scope}.{method.name}")
            request = self.scopes.reference(method.input_type, scope)
            response = self.scopes.reference(method.output_type, scope)
            request = ("stream " if method.client_streaming else "") + request
            response = ("stream " if method.server_streaming else "") + response
            items = option_items(method.options, f"{scope}.{method.name}")
            if method.HasField("options") and not items:  # `{}` after an rpc gives it empty options
                self.emit(1, f"rpc {method.name}({request}) returns ({response}) {{}}")
            elif items:
                self.emit(1, f"rpc {method.name}({request}) returns ({response}) {{")
                for item in items:
                    self.emit(2, f"option {item};")
                self.emit(1, "}")
            else:
                self.emit(1, f"rpc {method.name}({request}) returns ({response});")
        self.emit(0, "}")


def header(distribution: str, file: descriptor_pb2.FileDescriptorProto, renames: dict[str, str],
           title: str) -> list[str]:
    """The distribution's license (as // comments) and where this file comes from."""
    dist = importlib.metadata.distribution(distribution)
    licenses = [path for path in dist.files or () if "LICENSE" in path.name.upper()]
    if len(licenses) != 1:
        raise SystemExit(f"{distribution}: expected one license file, found {[str(p) for p in licenses]}")
    lines = []
    for line in licenses[0].read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            line = line[1:]
        lines.append(("//" + line).rstrip())
    changed = [f"{old} -> {renames[old]}" for old in file.dependency if old in renames]
    lines += [
        "",
        f"// Derived from the descriptors shipped in the PyPI package {distribution} {dist.version}",
        f"// ({file.name} of the {title}).",
        "// A descriptor holds no comments, so the original's documentation comments are not reproduced.",
        ("// Only change: the import path (" + "; ".join(changed) + ")." if changed else
         "// No changes."),
        "// Regenerated by scripts/proto_from_descriptor.py; do not edit by hand.",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="an importable *_pb2 module, e.g. tritonclient.grpc.service_pb2")
    parser.add_argument("--rename-import", action="append", default=[], metavar="OLD=NEW",
                        help="write `import \"NEW\"` for the dependency OLD (repeatable)")
    parser.add_argument("--distribution", help="start with this installed distribution's license and version")
    parser.add_argument("--title", default=TITLE, help="what the definition is, for the header comment")
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    args = parser.parse_args(argv)
    renames = dict(item.split("=", 1) for item in args.rename_import)
    file, dependencies = load_files(args.module)
    unused = set(renames) - set(file.dependency)
    if unused:
        parser.error(f"--rename-import: {file.name} does not import {sorted(unused)}")
    try:
        body = Printer(file, dependencies, renames).print_file()
    except Unsupported as error:
        print(f"unsupported: {error}", file=sys.stderr)
        return 1
    lines = (header(args.distribution, file, renames, args.title) if args.distribution else []) + body
    text = "\n".join(lines) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="\n") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
