"""The last module the harness's forkserver preloads: importing it runs the listed test modules.

A forkserver's preload list holds module names only, and the server imports them plainly;
a test module must run with pytest's assertion rewriting, which this import does (see
``_worker.load_server_modules``). Nothing else imports this module.
"""

from mpdist.testing._worker import load_server_modules

load_server_modules()
