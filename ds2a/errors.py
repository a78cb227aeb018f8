"""One exception type for mistakes a user can fix; the CLI prints it without a traceback."""


class UserError(Exception):
    """A problem with the user's input (file, option, data). The message names the file and the fix."""
