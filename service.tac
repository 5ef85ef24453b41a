"""
Ersid as a .tac file: twistd -ny service.tac

Options as for twistd ersid may be given in $ERSID_OPTIONS.
"""

import os
import shlex

from twisted.application.service import Application

from ersid.tap import Options, makeService

options = Options()
try:
    options.parseOptions(shlex.split(os.environ.get("ERSID_OPTIONS", "")))
except SystemExit as e:
    if not isinstance(e.code, str):
        raise
    raise SystemExit(e.code.partition(" (the options")[0] + " (in $ERSID_OPTIONS)") from None

application = Application("Ersid application")
makeService(options).setServiceParent(application)
