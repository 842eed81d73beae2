import sys


def progress(done: int, total: int | None, what: str) -> None:
    """A one-line progress bar on stderr (stdout may be carrying data)."""
    if total:
        filled = 30 * min(done, total) // total
        bar = f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{total}"
    else:
        bar = str(done)
    sys.stderr.write(f"\r{bar} {what}")
    sys.stderr.flush()


def done() -> None:
    sys.stderr.write("\n")
