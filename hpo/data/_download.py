"""Fetching the official archives of the downloadable data sets, with MD5 checks."""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hpo.errors import DataError

log = logging.getLogger(__name__)

#: Environment variable: a base URL that replaces the official one (``{name}`` in it is
#: replaced by the data set name, so one mirror can hold several sets).
MIRROR_ENV = "HPO_DATA_MIRROR"
TIMEOUT_S = 60.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """Where a data set's official files live.

    ``urls`` are base URLs tried in order (each file is ``base + filename``);
    ``files`` are ``(filename, md5)`` pairs; files ending in ``.tar.gz`` are extracted
    into the target folder after the check.
    """

    urls: tuple[str, ...]
    files: tuple[tuple[str, str], ...]
    homepage: str = ""


SOURCES: dict[str, Source] = {
    "mnist": Source(
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist/",),
        files=(
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        ),
        homepage="http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion_mnist": Source(
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files=(
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    ),
    "cifar10": Source(
        urls=("https://www.cs.toronto.edu/~kriz/",),
        files=(("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
    "cifar100": Source(
        urls=("https://www.cs.toronto.edu/~kriz/",),
        files=(("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
}


def file_md5(path: Path) -> str:
    """Return the hex MD5 of the file at ``path``."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def base_urls(name: str) -> tuple[str, ...]:
    """Base URLs to try for ``name``: the ``HPO_DATA_MIRROR`` mirror alone when set, else the official ones."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return SOURCES[name].urls
    mirror = mirror.replace("{name}", name)
    if urllib.parse.urlsplit(mirror).scheme not in ("http", "https", "file"):
        raise DataError(f"{MIRROR_ENV}={mirror!r} must be an http://, https:// or file:// URL")
    return (mirror if mirror.endswith("/") else mirror + "/",)


def _fetch(url: str, dest: Path, md5: str) -> None:
    """Stream ``url`` to a temporary file next to ``dest``, check the MD5, then rename it to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != md5.lower():
            raise DataError(
                f"checksum mismatch for {url}: expected md5 {md5}, got {actual}; the download is corrupt "
                f"or the mirror serves a different file (removed it)"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _extract(archive: Path, root: Path) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, filter="data")
            else:  # Python < 3.11.4: refuse absolute paths, "..", links and devices ourselves
                for member in tar.getmembers():
                    parts = Path(member.name).parts
                    if (
                        member.name.startswith(("/", "\\"))
                        or ".." in parts
                        or not (member.isfile() or member.isdir())
                    ):
                        raise DataError(f"{archive}: refusing to extract unsafe member {member.name!r}")
                tar.extractall(root)  # members checked above
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot extract {archive} into {root}: {exc}; delete it and try again") from None


def download(name: str, root: str | Path) -> None:
    """Fetch and verify the official files of ``name`` into ``root`` (created if needed).

    Files already in ``root`` with the right MD5 are not fetched again; ``.tar.gz``
    archives are extracted into ``root``. Base URLs come from :func:`base_urls`.
    Raises :class:`DataError` (naming the URL) when every URL fails or a checksum
    does not match; no partial file is left behind.
    """
    if name not in SOURCES:
        raise DataError(f"dataset {name!r} cannot be downloaded; downloadable: {', '.join(SOURCES)}")
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create data folder {root}: {exc}") from None
    bases = base_urls(name)
    for filename, md5 in SOURCES[name].files:
        dest = root / filename
        if dest.is_file() and file_md5(dest) == md5.lower():
            log.info("%s: %s already present", name, dest)
        else:
            errors = []
            for base in bases:
                url = urllib.parse.urljoin(base, filename)
                log.info("%s: downloading %s", name, url)
                try:
                    _fetch(url, dest, md5)
                    break
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    plain_url_error = type(exc) is urllib.error.URLError
                    errors.append(f"{url}: {exc.reason if plain_url_error else exc}")
            else:
                raise DataError(
                    f"cannot download {name}: {'; '.join(errors)}. Download {filename} yourself into {root} "
                    f"or set {MIRROR_ENV} to a mirror's base URL"
                )
        if filename.endswith(".tar.gz"):
            _extract(dest, root)
