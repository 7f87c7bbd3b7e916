"""The two kinds of error a user can act on, and how the command line reports them.

* :class:`BadInput`: something the user gave is wrong (a manifest key, a path, a file). The CLI
  prints one line naming the field, file or patch and exits with code 2. Nothing has been written.
* :class:`RunFailed`: the input was fine but the run could not finish (a source that keeps failing,
  patches that ran out of retries). The CLI prints one line and exits with code 1.

Other modules subclass these (``ManifestError``, ``StoreRefused``, …) so the CLI needs only one
rule per exit code.
"""

from __future__ import annotations


class BadInput(ValueError):
    """Wrong input from the user: exit code 2, one line naming what is wrong and what to do."""


class RunFailed(RuntimeError):
    """The run could not finish although its input was valid: exit code 1."""
