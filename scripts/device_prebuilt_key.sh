#!/usr/bin/env bash
# The key that ties a prebuilt pack to its source: sha256 over the names and contents of the files in a
# llama-src.tar.xz (device_pack.sh), not over the archive, whose bytes change with file times.
#   bash scripts/device_prebuilt_key.sh .devcarry/llama-src.tar.xz
set -euo pipefail
python3 - "$1" <<'PY'
import hashlib, sys, tarfile

digests = {}
with tarfile.open(sys.argv[1], "r|xz") as tar:   # one pass in archive order (seeking in xz decompresses again)
    for m in tar:
        if m.isfile():
            digests[m.name] = hashlib.sha256(tar.extractfile(m).read()).digest()
h = hashlib.sha256()
for name in sorted(digests):
    h.update(name.encode() + b"\0" + digests[name])
print(h.hexdigest()[:32])
PY
