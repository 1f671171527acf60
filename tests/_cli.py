"""In-process ``nearopt`` calls for the tests: exit status, stdout and stderr of one command line."""

import contextlib
import io as _io

from nearopt.cli import main


def cli(*argv):
    """Exit status, stdout and stderr of an in-process ``nearopt`` call (argparse errors included).

    Each argument is passed through ``str`` (paths, numbers); an argparse ``SystemExit`` gives its code.
    """
    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()
