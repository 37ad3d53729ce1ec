"""The files a tool writes its results to (a report, a plot), checked before its run: found only when the run is
over, a path that cannot be written lost what the run had measured."""

from __future__ import annotations

from pathlib import Path


def unwritable(path: Path) -> str | None:
    """Why ``path`` could not be written as a file, or None. Checked by opening it as the write will (a missing
    file is created, then removed), so a read-only filesystem or /proc is caught as well as a directory."""
    if path.is_dir():
        return f"{path} is a directory"
    if not path.parent.is_dir():
        return f"directory {path.parent} does not exist"
    existed = path.exists()
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        return f"cannot write {path}: {e.strerror}"
    if not existed:
        path.unlink()
    return None


def png_path(path: Path, flag: str) -> Path:
    """The PNG file a plot flag names: ``.png`` added where the name has no suffix (matplotlib would add it, and
    the tool name the file without it); raises ValueError for another suffix (matplotlib writes none but PNG
    here, or fails after the run)."""
    if path.is_dir() or not path.name:  # "." or "..": a suffix would name a file beside the directory
        raise ValueError(f"{flag}: {path} is a directory")
    if not path.suffix:
        return path.with_suffix(".png")
    if path.suffix.lower() != ".png":
        raise ValueError(f"{flag} writes a PNG: name a .png file, not {path}")
    return path
