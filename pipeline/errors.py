"""Errors a user sees as one line: what failed, on which case or file, and why."""


class SegpipeError(Exception):
    """Base for expected failures; the CLI prints `str(err)` and exits non-zero, no traceback."""


class ImageError(SegpipeError):
    """An image file that cannot be used: unreadable, wrong dimensionality, non-finite, bad header."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # one line, whatever the backend printed
        super().__init__(f"{self.path}: {self.reason}")


class CaseError(SegpipeError):
    """A case that cannot be processed (inconsistent modalities, bad labels, unsafe id, ...)."""

    def __init__(self, case_id: str, reason: str) -> None:
        self.case_id = case_id
        self.reason = " ".join(str(reason).split())
        super().__init__(f"case {case_id}: {self.reason}")


class ConfigError(SegpipeError):
    """Invalid configuration file or override."""
