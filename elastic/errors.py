"""The one exception type for failures a user can cause (bad input, bad files, infeasible requests).

Every layer raises it; the CLI turns it into a single line on stderr and exit code 2.
Anything else escaping the code is a bug.
"""


class OFAError(Exception):
    """A failure caused by user input, written for the user: what was wrong and what is allowed."""
