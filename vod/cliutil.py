"""The one dispatcher from `VodError` to exit codes, shared by every console script."""

import argparse
import sys
from typing import Callable, Sequence

from vod.errors import VodError


class ArgumentParser(argparse.ArgumentParser):
    """argparse that shows defaults in --help, so `--help` explains every flag."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def run(entry: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None, prog: str = "vod") -> int:
    """Run `entry(argv)`; print a `VodError` as `prog: error: ...` and return its exit code."""
    if argv is None:
        argv = sys.argv[1:]
    try:
        return entry(argv) or 0
    except VodError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): not an error of ours.
        sys.stderr.close()
        return 0


def pending_command(prog: str, description: str, issue: int) -> Callable[[], int]:
    """An entry point that answers --help but says plainly that its work is not built yet.

    Used for the console scripts whose behaviour later issues fill in; never
    pretends to do the work.
    """

    def entry(argv: Sequence[str]) -> int:
        parser = ArgumentParser(prog=prog, description=description)
        parser.parse_args(argv)
        raise VodError(f"{prog} is not built yet (tracked in issue {issue})")

    def main() -> int:
        return run(entry, prog=prog)

    return main
