"""Log lines for our processes: epoch timestamps with microseconds, so lines of several processes can be merged."""

import logging
import sys


def setup_logging(level: str = "INFO", stream=sys.stderr) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(created).6f %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Route Twisted's own log (connection errors, unhandled errors in protocols) into the same stream.
    from twisted.logger import STDLibLogObserver, globalLogBeginner
    globalLogBeginner.beginLoggingTo([STDLibLogObserver(name="twisted")], redirectStandardIO=False)
