"""The one exception type for user mistakes: the CLI prints it as a single line."""

# What str.splitlines() breaks a line at: a file or member name holding one must not break the message.
_LINE_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


class FerkitError(Exception):
    """A problem with the user's input (file, row, option), reported without a traceback.

    Its message is always one line: line breaks that a name or a file's content brings in are escaped.
    """

    def __str__(self) -> str:
        return super().__str__().translate(_LINE_BREAKS)
