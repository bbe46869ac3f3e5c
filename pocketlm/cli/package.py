"""pocketlm package MODEL --out DIR: a store model as wheels for a private package index,
with the catalog entry that pulls it back."""

from __future__ import annotations

import argparse
import shlex
from urllib.parse import urlsplit

from pocketlm.cli.fmt import human_bytes
from pocketlm.errors import UsageError

HELP = "turn a store model into wheels for your own package index, with its catalog entry"

EXAMPLES = """examples:
  pocketlm package acme-support-135m --out dist/acme
  pocketlm package smollm2-135m-instruct-q4_k_m --out dist/q4 --chunk-size 100MiB
  pocketlm package acme-support-135m --out dist/acme --version 1.1.0 \\
      --index-url https://pypi.internal.example/simple/

DIR receives one wheel per chunk (<prefix>-part<N>, pure Python, installable by pip), a
PEP 503 simple index of them in DIR/simple/, and DIR/catalog.toml, the entry that pulls
the model back by name. Serve DIR as it is (python -m http.server --directory DIR) or
upload the wheels to your own index (devpi, Nexus, Artifactory, ...). On the machine that
pulls, point pocketlm at the entry (POCKETLM_CATALOG=catalog.toml, or copy it into the
store) and pip at the index (--index-url here, or PIP_INDEX_URL there), then
pocketlm pull NAME. The same model and options always give the same bytes.

A non-empty DIR is refused unless it holds an earlier package of the same name, which is
replaced. See docs/packaging.md."""

_LOOPBACK = ("localhost", "127.0.0.1", "::1")  # hosts pip trusts over plain http


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pocketlm.store.package import DEFAULT_CHUNK, DEFAULT_VERSION, MIN_CHUNK

    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("model", help="store name of the model (see `pocketlm list`)")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write (created)")
    p.add_argument(
        "--chunk-size",
        metavar="SIZE",
        help=f"most bytes per wheel, e.g. 50MB, 100MiB, 1GB (default: {DEFAULT_CHUNK // 10**6}MB;"
        f" at least {MIN_CHUNK // 10**6}MB)",
    )
    p.add_argument("--name", help="the name the catalog entry gives it (default: its store name)")
    p.add_argument(
        "--package-prefix",
        metavar="PREFIX",
        help="distribution names are <PREFIX>-part<N> (default: from the name)",
    )
    p.add_argument("--version", help=f"the wheels' PEP 440 version (default: {DEFAULT_VERSION})")
    p.add_argument(
        "--index-url",
        metavar="URL",
        help="the index that will serve the wheels, recorded in the entry for pip",
    )


def main(args: argparse.Namespace) -> int:
    from pocketlm.progress import RichProgress
    from pocketlm.store import package

    chunk = package.DEFAULT_CHUNK if args.chunk_size is None else _size(args.chunk_size)
    progress = RichProgress()
    try:
        done = package.package(
            args.model,
            args.out,
            chunk_size=chunk,
            name=args.name,
            package_prefix=args.package_prefix,
            version=package.DEFAULT_VERSION if args.version is None else args.version,
            index_url=args.index_url,
            progress=progress,
        )
    finally:
        progress.close()
    print(report(done, args.index_url))
    return 0


def _size(text: str) -> int:
    from pocketlm.services.quantize.budget import parse_size

    try:
        return parse_size(text)
    except UsageError as e:
        raise UsageError(f"invalid --chunk-size '{text}'", e.hint) from None


def report(done, index_url: str | None) -> str:
    """What was written, and the commands that serve it and pull it elsewhere."""
    rate = done.size_bytes / 1e6 / max(done.seconds, 1e-9)
    env = "POCKETLM_CATALOG=catalog.toml"
    if index_url is None:  # they serve DIR themselves, over plain http
        env += " PIP_INDEX_URL=http://HOST:8000/simple/ PIP_TRUSTED_HOST=HOST"
    elif (url := urlsplit(index_url)).scheme == "http" and url.hostname not in _LOOPBACK:
        env += f" PIP_TRUSTED_HOST={url.hostname}"  # pip refuses plain http elsewhere
    return "\n".join(
        [
            f"packaged {done.name}: {len(done.wheels)} wheel(s), {human_bytes(done.size_bytes)}"
            f" in {done.seconds:.1f} s ({rate:.0f} MB/s), sha256 {done.sha256[:12]}...",
            f"  wheels:        {done.out}",
            f"  simple index:  {done.index}/",
            f"  catalog entry: {done.catalog}",
            f"serve it:  python3 -m http.server 8000 --directory {shlex.quote(str(done.out))}",
            "           (or upload the wheels to your team's package index)",
            "pull it:   copy catalog.toml to the other machine (or into its store as "
            "~/.pocketlm/catalog.toml), then",
            f"           {env} pocketlm pull {done.name}",
        ]
    )
