#!/usr/bin/env python3
"""Makes a hostile or damaged copy of an instance archive, for the tests of `fireclaw import`.

    forge-archive.py IN OUT EDIT...

IN is a plain (zstd) archive of `fireclaw export`. Each EDIT changes the tar's members or the
manifest; `reseal` recomputes the manifest's sizes and the checksums (so that only the edit
made on purpose is wrong). OUT is written with zstd -3. Edits:

    manifest KEY=JSON      set a top-level manifest key (format=2, id="b")
    declare NAME=SIZE      set the size the manifest declares for NAME (and, for the disk, its
                           map and logical size to one extent of that size)
    flip NAME              change one byte of NAME's data
    state NAME KEY=VALUE   set KEY in the KEY=VALUE state file NAME (state/env, ...)
    json NAME KEY=JSON     set a top-level key of the JSON state file NAME
    add NAME KIND          a member after the manifest: KIND is file, symlink, hardlink,
                           device or fifo; not listed in the manifest
    kind NAME KIND         NAME's entry becomes KIND (symlink, hardlink, device, fifo) in place
    dup NAME               NAME again, right after itself
    pad N                  N zero bytes after the tar's end (a stream that expands on)
    pax NAME PATH          NAME's header gets a PAX path record naming PATH
    reseal                 recompute sizes and checksums from the data
"""

import hashlib
import io
import json
import subprocess
import sys
import tarfile

MANIFEST = "manifest.json"
CHECKSUMS = "checksums.json"
DISK = "disk/rootfs.ext4"


def read(path):
    raw = subprocess.run(["zstd", "-dc", path], check=True, stdout=subprocess.PIPE).stdout
    members = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
        for info in archive:
            data = archive.extractfile(info).read() if info.isfile() else b""
            members.append([info, data])
    return members


def find(members, name):
    for member in members:
        if member[0].name == name:
            return member
    raise SystemExit(f"no member {name}")


def manifest_of(members):
    return json.loads(find(members, MANIFEST)[1])


def set_manifest(members, manifest):
    find(members, MANIFEST)[1] = json.dumps(manifest, indent=2).encode()


def map_prefix(entry):
    text = f"size {entry['logical_size']}\n"
    for offset, length in entry["extents"]:
        text += f"extent {offset} {length}\n"
    return text.encode()


def reseal(members):
    manifest = manifest_of(members)
    for entry in manifest["members"]:
        if entry["name"] != CHECKSUMS:
            entry["size"] = len(find(members, entry["name"])[1])
    set_manifest(members, manifest)
    sums = {}
    for info, data in members:
        if info.name == CHECKSUMS or not info.isfile():
            continue
        digest = hashlib.sha256()
        entry = next((e for e in manifest["members"] if e["name"] == info.name), None)
        if entry is not None and "extents" in entry:
            digest.update(map_prefix(entry))
        digest.update(data)
        sums[info.name] = digest.hexdigest()
    checksums = json.dumps({"sha256": dict(sorted(sums.items()))}, indent=2).encode()
    find(members, CHECKSUMS)[1] = checksums
    # The checksums' own size changed with the manifest's digest: once more for both.
    for entry in manifest["members"]:
        if entry["name"] == CHECKSUMS:
            entry["size"] = len(checksums)
    set_manifest(members, manifest)
    sums[MANIFEST] = hashlib.sha256(find(members, MANIFEST)[1]).hexdigest()
    find(members, CHECKSUMS)[1] = json.dumps({"sha256": dict(sorted(sums.items()))}, indent=2).encode()


def edit_lines(data, key, value):
    lines = [l for l in data.decode().splitlines() if not l.startswith(key + "=")]
    lines.append(f"{key}={value}")
    return ("\n".join(lines) + "\n").encode()


def new_info(name, kind):
    info = tarfile.TarInfo(name)
    info.mode = 0o600
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "state/env"
    elif kind == "device":
        info.type, info.devmajor, info.devminor = tarfile.BLKTYPE, 8, 0
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE
    return info


def main(argv):
    source, target, edits = argv[1], argv[2], argv[3:]
    members = read(source)
    pax = False
    pad = 0
    i = 0
    while i < len(edits):
        edit = edits[i]
        if edit == "manifest":
            key, value = edits[i + 1].split("=", 1)
            manifest = manifest_of(members)
            manifest[key] = json.loads(value)
            set_manifest(members, manifest)
            i += 2
        elif edit == "declare":
            name, size = edits[i + 1].split("=", 1)
            manifest = manifest_of(members)
            for entry in manifest["members"]:
                if entry["name"] == name:
                    entry["size"] = int(size)
                    if name == DISK:
                        entry["logical_size"] = int(size)
                        entry["extents"] = [[0, int(size)]]
            set_manifest(members, manifest)
            i += 2
        elif edit == "flip":
            member = find(members, edits[i + 1])
            data = bytearray(member[1])
            data[len(data) // 2] ^= 0xFF
            member[1] = bytes(data)
            i += 2
        elif edit == "state":
            member = find(members, edits[i + 1])
            key, value = edits[i + 2].split("=", 1)
            member[1] = edit_lines(member[1], key, value)
            i += 3
        elif edit == "json":
            member = find(members, edits[i + 1])
            key, value = edits[i + 2].split("=", 1)
            document = json.loads(member[1])
            document[key] = json.loads(value)
            member[1] = json.dumps(document, indent=2).encode()
            i += 3
        elif edit == "add":
            info = new_info(edits[i + 1], edits[i + 2])
            members.insert(1, [info, b"planted\n" if info.isfile() else b""])
            i += 3
        elif edit == "kind":
            at = next(n for n, m in enumerate(members) if m[0].name == edits[i + 1])
            members[at] = [new_info(edits[i + 1], edits[i + 2]), b""]
            i += 3
        elif edit == "pad":
            pad = int(edits[i + 1])
            i += 2
        elif edit == "dup":
            name = edits[i + 1]
            at = next(n for n, m in enumerate(members) if m[0].name == name)
            info, data = members[at]
            members.insert(at + 1, [tarfile.TarInfo(info.name), data])
            i += 2
        elif edit == "pax":
            member = find(members, edits[i + 1])
            member[0].pax_headers = {"path": edits[i + 2]}
            pax = True
            i += 3
        elif edit == "reseal":
            reseal(members)
            i += 1
        else:
            raise SystemExit(f"unknown edit {edit}")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:", format=tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT) as archive:
        for info, data in members:
            if info.isfile():
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(info)
    out.write(bytes(pad))
    with open(target, "wb") as file:
        subprocess.run(["zstd", "-3", "-q", "-c"], input=out.getvalue(), check=True, stdout=file)


if __name__ == "__main__":
    main(sys.argv)
