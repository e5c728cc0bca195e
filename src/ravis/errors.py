"""The error ravis raises when one of its checks on what it was given fails."""


class InputError(ValueError):
    """A check in ravis failed on what it was given (a file, a folder, a config value, an
    argument), and the message names the problem and where it is.

    A ValueError, so callers of the library catch it as before. The command line reports it
    as one line. Any other ValueError is a bug in ravis and is reported as one: a library
    ravis called was given something it should not have been, or one of ravis's checks on
    how its own parts call each other (a plain ValueError) failed.
    """
