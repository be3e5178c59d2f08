"""pretrain_gpt.main run in the test's own process, for the many CLI cases that need no ranks."""
import contextlib
import io


def pretrain_in_process(argv):
    """(exit code, stdout, stderr) of pretrain_gpt.main(argv)."""
    import pretrain_gpt
    out, err = io.StringIO(), io.StringIO()
    rc = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            pretrain_gpt.main(list(argv))
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()
