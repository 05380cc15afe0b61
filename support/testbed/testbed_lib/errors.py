"""The one error type the test bed raises, so callers can tell it from a bug."""


class TestbedError(RuntimeError):
    """A part of the test bed could not be installed, configured or started.

    The message is one line and, where there is one, names the log file to read.
    """

    __test__ = False  # pytest collects classes named Test*; this is not a test.
