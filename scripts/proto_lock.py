"""Keeps the gRPC API's wire contract with the clients already built on it.

protos/api.lock.json records every field number (its name, type and whether it
repeats), enum value and RPC that a release has offered. A client compiled from
an older .proto keeps working as long as none of them changes meaning: a field
may be added, and removed only with its number and name ``reserved``; a number
may never be reused for another field; an RPC or enum value may not go, nor
change its types. A part of what ``buf breaking`` checks (this machine has no
buf): its WIRE_JSON rules on fields, where a rename counts (it breaks JSON and
regenerated code), and stricter on enum values and RPCs, which no rule here lets
go; ``json_name`` and proto3 ``optional`` are not compared.

    .venv/bin/python scripts/proto_lock.py --check   # fail on a break, or on a lock behind the .proto files
    .venv/bin/python scripts/proto_lock.py           # add what is new to the lock (run by gen_protos.py)

An intended break (a new package version) is made by editing the lock by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "protos" / "api.lock.json"

Surface = dict[str, dict[str, list]]


def current_surface() -> tuple[Surface, dict[str, set]]:
    """The API the .proto files under protos/ offer now, and each message's reserved numbers and names."""
    import grpc_tools
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    sys.path.insert(0, str(ROOT / "scripts"))
    from gen_protos import proto_files

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "api.pb"
        args = ["grpc_tools.protoc", f"-I{ROOT}", f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
                f"--descriptor_set_out={out}", *[str(p.relative_to(ROOT)) for p in proto_files()]]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file

    fields: dict[str, list] = {}
    enums: dict[str, list] = {}
    rpcs: dict[str, list] = {}
    reserved: dict[str, set] = {}

    def message(prefix: str, m) -> None:
        name = f"{prefix}.{m.name}"
        reserved[name] = {n for r in m.reserved_range for n in range(r.start, r.end)} | set(m.reserved_name)
        for f in m.field:
            kind = f.type_name.lstrip(".") or descriptor_pb2.FieldDescriptorProto.Type.Name(f.type)
            fields[f"{name}.{f.number}"] = [f.name, kind, f.label == f.LABEL_REPEATED]
        for nested in m.nested_type:
            message(name, nested)
        for e in m.enum_type:
            enum(name, e)

    def enum(prefix: str, e) -> None:
        for v in e.value:
            enums[f"{prefix}.{e.name}.{v.number}"] = [v.name]

    for f in files:
        for m in f.message_type:
            message(f.package, m)
        for e in f.enum_type:
            enum(f.package, e)
        for s in f.service:
            for r in s.method:
                rpcs[f"{f.package}.{s.name}/{r.name}"] = [r.input_type.lstrip("."), r.output_type.lstrip("."),
                                                          r.client_streaming, r.server_streaming]
    return {"fields": fields, "enums": enums, "rpcs": rpcs}, reserved


def breaks(lock: Surface, surface: Surface, reserved: dict[str, set]) -> list[str]:
    """What in ``lock`` the current ``surface`` no longer offers as it was: one line each."""
    found = []
    for section, entries in lock.items():
        for key, was in entries.items():
            now = surface[section].get(key)
            if now == was:
                continue
            if now is None and section == "fields":
                message, number = key.rsplit(".", 1)
                if int(number) in reserved.get(message, set()) and was[0] in reserved[message]:
                    continue
                found.append(f"{message}: field {number} ({was[0]}) removed without reserving its number and name")
            elif now is None:
                found.append(f"{key} ({was[0]}) removed" if section == "enums" else f"RPC {key} removed")
            else:
                found.append(f"{key} was {was}, is {now}")
    return found


def _order(key: str) -> tuple[str, int]:
    """Field numbers and enum values in numeric order (ServiceStatus.2 before ServiceStatus.10)."""
    head, _, tail = key.rpartition(".")
    return (head, int(tail)) if tail.isdigit() else (key, 0)


def read_lock() -> Surface:
    return json.loads(LOCK.read_text()) if LOCK.exists() else {"fields": {}, "enums": {}, "rpcs": {}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 on a break or a lock behind")
    check = parser.parse_args(argv).check
    lock = read_lock()
    surface, reserved = current_surface()
    broken = breaks(lock, surface, reserved)
    if broken:
        print("the .proto files break clients built on protos/api.lock.json:\n  " + "\n  ".join(broken) +
              "\nreserve a removed field's number and name; add a new field or RPC instead of changing one",
              file=sys.stderr)
        return 1
    merged = {section: {**lock[section], **surface[section]} for section in surface}
    if merged == lock:
        return 0
    if check:
        new = sorted(set().union(*(surface[s].keys() - lock[s].keys() for s in surface)))
        print(f"protos/api.lock.json lacks {', '.join(new[:5])}{' ...' if len(new) > 5 else ''}: "
              "run .venv/bin/python scripts/gen_protos.py and commit the lock", file=sys.stderr)
        return 1
    # One entry a line, so that a change to the lock reads as the API change it is.
    sections = (f"  {json.dumps(s)}: {{\n" + ",\n".join(f"    {json.dumps(k)}: {json.dumps(e[k])}"
                                                       for k in sorted(e, key=_order)) + "\n  }"
                for s, e in merged.items())
    LOCK.write_text("{\n" + ",\n".join(sections) + "\n}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
