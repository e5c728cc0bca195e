"""The error ravis raises when one of its own checks fails."""


class InputError(ValueError):
    """A check in ravis failed on what it was given (a file, a folder, a config value, an
    argument), and the message names the problem and where it is.

    A ValueError, so callers of the library catch it as before. The command line reports it
    as one line; a ValueError of any other kind comes from a library ravis called with
    something it should not have, which is a bug in ravis, and is reported as one.
    """
