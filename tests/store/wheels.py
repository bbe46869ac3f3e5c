"""Build real wheels that carry GGUF files, for a local package index in tests."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def make_wheel(
    index: Path, name: str, version: str, files: dict[str, bytes], corrupt_record: bool = False
) -> Path:
    """Write ``{name}-{version}-py3-none-any.whl`` holding ``files`` into ``index``."""
    index.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    meta = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: pocketlm-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    contents = {**files, **meta}
    rows = []
    for path, data in contents.items():
        digest = hashlib.sha256(data + (b"x" if corrupt_record and path in files else b""))
        b64 = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
        rows.append(f"{path},sha256={b64},{len(data)}")
    rows.append(f"{info}/RECORD,,")
    wheel = index / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in contents.items():
            zf.writestr(path, data)
        zf.writestr(f"{info}/RECORD", "\n".join(rows) + "\n")
    return wheel
