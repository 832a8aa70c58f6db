"""The one exception type for user mistakes: the CLI prints it as a single line."""


class FerkitError(Exception):
    """A problem with the user's input (file, row, option), reported without a traceback."""
