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


def check_outputs(report: Path | None, plot: Path | None, report_flag: str, plot_flag: str) -> Path | None:
    """The plot file to write (``png_path``); ValueError naming the flag where the report and the plot are one
    file, or either could not be written (``unwritable``)."""
    def check(path: Path | None, flag: str) -> None:
        why = unwritable(path) if path is not None else None
        if why:
            raise ValueError(f"{flag}: {why}")

    check(report, report_flag)
    plot = png_path(plot, plot_flag) if plot is not None else None
    if plot is not None and report is not None and plot.resolve() == report.resolve():
        raise ValueError(f"{plot_flag} {plot} is {report_flag}'s file: name another")
    check(plot, plot_flag)
    return plot
