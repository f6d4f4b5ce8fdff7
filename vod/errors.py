"""Errors that carry their user-facing text.

Library code raises a `VodError` subclass with a message a user can act on;
`vod.cliutil.run` is the one place that turns them into stderr text and an
exit code (the magic-wormhole habit: no `sys.exit` scattered in the library).
"""


class VodError(Exception):
    """Base of every error we expect a user to see. `str(err)` is the message."""

    exit_code = 1


class UsageError(VodError):
    """A flag or argument that cannot work (bad value, missing file...)."""

    exit_code = 2


class MediaError(VodError):
    """A video file we cannot read, or cannot turn into frames."""

    exit_code = 3


class StoreError(VodError):
    """The movie store refuses: unknown or existing id, unwritable path, damaged movie."""

    exit_code = 4


class CorruptMovie(StoreError):
    """A stored frame no longer matches its recorded checksum."""

    exit_code = 5


class MaskError(VodError, ValueError):
    """A frame mask that cannot be decoded or does not fit the movie."""

    exit_code = 2
