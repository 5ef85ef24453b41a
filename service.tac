"""
Ersid as a .tac file: twistd -ny service.tac

Options as for twistd ersid may be given in $ERSID_OPTIONS.
"""

import os
import shlex

from twisted.application.service import Application
from twisted.python.usage import UsageError

from ersid.tap import Options, makeService

options = Options()
try:
    options.parseOptions(shlex.split(os.environ.get("ERSID_OPTIONS", "")))
except UsageError as e:
    raise SystemExit(f"ersid: {e} (in $ERSID_OPTIONS)") from None

application = Application("Ersid application")
makeService(options).setServiceParent(application)
