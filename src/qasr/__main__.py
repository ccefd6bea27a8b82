"""`python -m qasr`: the same as the `qasr` command."""

import sys

if __name__ == "__main__":
    try:
        from qasr.cli import main
    except KeyboardInterrupt:  # Ctrl-C while Python is still importing: no traceback for that either
        sys.exit(130)  # 128 + SIGINT, as qasr.cli.INTERRUPTED
    sys.exit(main())
